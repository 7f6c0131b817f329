//! `cargo bench --bench kernels [-- --quick] [-- --filter NAME]`: kernel microbenchmarks
//! with GPU timestamps (see src/bench.rs and docs/performance.md).
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut opts = equimodal::bench::BenchOptions::default();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--quick" => opts.quick = true,
            "--filter" if i + 1 < args.len() => {
                opts.filter = Some(args[i + 1].clone());
                i += 1;
            }
            "--reps" if i + 1 < args.len() => {
                opts.reps = args[i + 1].parse().unwrap_or(10);
                i += 1;
            }
            _ => {} // cargo passes --bench
        }
        i += 1;
    }
    let gpu = match equimodal::Gpu::default_device() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let timer_gpu = gpu.capabilities().timestamps;
    match equimodal::bench::run(&gpu, &opts, equimodal::bench::extra_cases(opts.quick)) {
        Ok(rows) => print!("{}", equimodal::bench::format_table(&gpu, &rows, timer_gpu)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
