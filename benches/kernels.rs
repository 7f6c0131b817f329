//! `cargo bench --bench kernels [-- --quick] [-- --filter NAME] [-- --reps N] [-- --e2e [--steps N]]`:
//! kernel microbenchmarks with GPU timestamps, or (`--e2e`) end-to-end training steps of the
//! CREMA-D AUG model by wall clock (see src/bench.rs and docs/performance.md).
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut opts = equimodal::bench::BenchOptions::default();
    let mut e2e = false;
    let mut steps = None;
    let mut reps = None;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--quick" => opts.quick = true,
            "--e2e" => e2e = true,
            "--steps" if i + 1 < args.len() => {
                steps = args[i + 1].parse().ok();
                i += 1;
            }
            "--filter" if i + 1 < args.len() => {
                opts.filter = Some(args[i + 1].clone());
                i += 1;
            }
            "--reps" if i + 1 < args.len() => {
                reps = args[i + 1].parse().ok();
                i += 1;
            }
            _ => {} // cargo passes --bench
        }
        i += 1;
    }
    // quick runs (software rasterisers) time fewer repetitions
    opts.reps = reps.unwrap_or(if opts.quick { 3 } else { 10 }).max(1);
    opts.warmup = if opts.quick { 1 } else { 3 };
    let gpu = match equimodal::Gpu::default_device() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if e2e {
        let eo = equimodal::bench::E2eOptions::new(opts.quick, opts.filter.clone(), steps);
        match equimodal::bench::run_e2e(&gpu, &eo, equimodal::bench::e2e_cases(opts.quick)) {
            Ok(rows) => print!("{}", equimodal::bench::format_e2e_table(&gpu, &rows)),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let timer_gpu = gpu.capabilities().timestamps;
    match equimodal::bench::run(&gpu, &opts, equimodal::bench::extra_cases(opts.quick)) {
        Ok(rows) => print!("{}", equimodal::bench::format_table(&gpu, &rows, timer_gpu)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
