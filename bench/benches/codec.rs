//! `make bench`: the cost of walking frames in the session, per frame and per byte relayed.
//! The ratio that matters is that a frame's body is never copied: the cost of a 1 MiB Produce
//! must be the same order as a 1 KiB one.
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_mesh_core::config::Config;
use kafka_mesh_core::session::{Direction, HostBuffer, NoopObserver, Session, Verdict};

struct Buf {
    data: Vec<u8>,
}

impl HostBuffer for Buf {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn read(&mut self, start: usize, len: usize) -> Option<Vec<u8>> {
        let end = start.saturating_add(len).min(self.data.len());
        self.data.get(start.min(end)..end).map(<[u8]>::to_vec)
    }
    fn replace_front(&mut self, drain: usize, data: &[u8]) -> bool {
        self.data.drain(..drain.min(self.data.len()));
        self.data.splice(0..0, data.iter().copied());
        true
    }
}

fn produce_frame(body: usize) -> Vec<u8> {
    // Produce v9, client_id "bench", no transactional id, acks=0 (never queued), then opaque
    // body bytes.
    let mut f = vec![
        0, 0, 0, 9, 0, 0, 0, 1, 0, 5, b'b', b'e', b'n', b'c', b'h', 0, 0, 0, 0,
    ];
    f.resize(f.len() + body, 0x42);
    let size = (f.len() - 4) as i32;
    f[..4].copy_from_slice(&size.to_be_bytes());
    f
}

fn bench(c: &mut Criterion) {
    let cfg = Rc::new(Config {
        max_inflight_requests: 1_000_000,
        ..Config::default()
    });
    let mut g = c.benchmark_group("session_request_walk");
    for body in [1024usize, 64 * 1024, 1024 * 1024] {
        let frame = produce_frame(body);
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(body), &frame, |b, frame| {
            let mut s = Session::new(cfg.clone());
            let mut buf = Buf {
                data: Vec::with_capacity(frame.len()),
            };
            b.iter(|| {
                buf.data.clear();
                buf.data.extend_from_slice(&frame[..frame.len().min(4096)]);
                // the first read holds the head; the rest of the frame is just streamed
                let v = s.on_data(Direction::Request, &mut buf, false, 0, &mut NoopObserver);
                assert_eq!(v, Verdict::Continue);
                let mut rest = Buf { data: Vec::new() };
                if frame.len() > 4096 {
                    let mut left = frame.len() - 4096;
                    // stream the remainder in one logical callback per 64 KiB without copying
                    while left > 0 {
                        let n = left.min(64 * 1024);
                        rest.data.resize(n, 0x42);
                        s.on_data(Direction::Request, &mut rest, false, 0, &mut NoopObserver);
                        left -= n;
                    }
                }
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
