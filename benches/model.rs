//! `cargo bench --bench model`: time per pretraining step (STIGA views, three
//! views forward, FGCO global, backward, AdamW, one submit) and peak GPU pool
//! memory, at the paper's configuration and ABIDE's (src/bench.rs).
//! `cargo bench --bench model -- paper` runs one case;
//! STPTF_BENCH_REPEATS / STPTF_BENCH_ABIDE_REPEATS set the repeats (5 / 2).

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let gpu = match stptf::gpu::Gpu::new() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!("adapter: {}", gpu.adapter_name());
    let cases = stptf::bench::model_cases(
        env("STPTF_BENCH_REPEATS", 5),
        env("STPTF_BENCH_ABIDE_REPEATS", 2),
    );
    for case in cases {
        if filter.as_deref().is_some_and(|f| !case.name.contains(f)) {
            continue;
        }
        // Peak memory per case: a fresh high-water mark needs a fresh pool.
        gpu.trim_pool();
        match stptf::bench::pretrain_step(&gpu, &case) {
            Ok(m) => println!(
                "{:6} {}  params={}  {:9.1} ms/step (median of {}; min {:.1}, max {:.1})  peak {:.0} MiB  loss {:.4}",
                m.name, m.shape, m.params, m.median_ms, m.repeats, m.min_ms, m.max_ms, m.peak_mib, m.loss
            ),
            Err(e) => {
                eprintln!("error: {}: {e}", case.name);
                std::process::exit(1);
            }
        }
    }
}
