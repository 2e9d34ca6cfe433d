//! Criterion benchmarks of the losses: forward and forward+backward, fused
//! and composed, at the shapes of [`tfkd_benches::SHAPES`].
//!
//! Ids are `<loss>/<fwd|fwd_bwd>/<fused|composed>/<N>x<K>`; criterion writes
//! `target/criterion/<loss>_<mode>/<path>/<N>x<K>/new/estimates.json`, which
//! `scripts/bench_losses_torch.py --criterion <target dir>` reads.

// `criterion_group!` defines a public function it cannot document.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::time::Duration;
use tfkd_benches::{inputs, Loss, Path, SHAPES};

fn losses(c: &mut Criterion) {
    for loss in Loss::ALL {
        for backward in [false, true] {
            let mode = if backward { "fwd_bwd" } else { "fwd" };
            let mut group = c.benchmark_group(format!("{}_{mode}", loss.name()));
            group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(20);
            for (n, k) in SHAPES {
                let x = inputs(n, k).expect("benchmark inputs");
                for path in Path::ALL {
                    let id = BenchmarkId::new(path.name(), format!("{n}x{k}"));
                    group.bench_function(id, |b| {
                        b.iter(|| {
                            if backward {
                                black_box(loss.forward_backward(path, &x).expect("loss"));
                            } else {
                                black_box(loss.forward(path, &x).expect("loss"));
                            }
                        })
                    });
                }
            }
            group.finish();
        }
    }
}

criterion_group!(benches, losses);
criterion_main!(benches);
