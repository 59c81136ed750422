//! `cargo bench`: every kernel at the model's shapes (see src/bench.rs).
//! `cargo bench -- matmul` keeps cases whose name contains "matmul".

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let gpu = match stptf::gpu::Gpu::new() {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = stptf::bench::run_kernels(&gpu, filter.as_deref(), 7) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
