//! The equimodal command line: train, eval, report, bench, devices, sweep, compare, data.
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "equimodal", version, about = "Balanced multimodal learning (AUG, AIM and baselines) on a hand-written wgpu engine")]
struct Cli {
    /// Adapter name substring (e.g. "llvmpipe", "nvidia"); overrides EQUIMODAL_ADAPTER.
    #[arg(long, global = true)]
    adapter: Option<String>,
    /// Backends to try: vulkan, metal, dx12, gl (comma-separated); overrides EQUIMODAL_BACKEND.
    #[arg(long, global = true)]
    backend: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a method on a dataset (config file + overrides); writes a run directory.
    Train {
        /// TOML config (see configs/); without it, the built-in default (AUG on the synthetic data).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config value, e.g. --set train.epochs=5 --set method.name=ogm_ge
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run directory (default: runs/<method>-<dataset>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the run directory's last checkpoint (the config must be the one it was
        /// trained with, except train.epochs).
        #[arg(long, conflicts_with = "force")]
        resume: bool,
        /// Replace the run already in --out (its metrics, config, summary and checkpoints).
        #[arg(long)]
        force: bool,
        /// With --resume: continue although the config changed (the changes are logged).
        #[arg(long, requires = "resume")]
        allow_config_change: bool,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Evaluate a checkpoint (file, or run directory: best on validation, else last).
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        /// Override values of the stored config (e.g. the data root).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Also the linear probe: a logistic regression on each modality's frozen encoder
        /// features (training split), its test accuracy (the field's unimodal metric).
        #[arg(long)]
        probe: bool,
        /// With --probe: also write the figures as DIR/probe.json and chart them in
        /// DIR/charts/probe.{png,svg}.
        #[arg(long, value_name = "DIR", requires = "probe")]
        out: Option<PathBuf>,
        /// With --out: replace a probe.json already there (a run's own, say).
        #[arg(long, requires = "out")]
        force: bool,
    },
    /// List GPU adapters with backend, features and key limits.
    Devices,
    /// Tune the kernels a configuration runs on this device (each candidate variant timed,
    /// the fastest correct one kept in the tuning cache) and print the table of choices.
    Tune {
        /// TOML config; without it, the built-in default (as `train`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config value (as `train`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Time each candidate a few times (`EQUIMODAL_TUNE=quick`) instead of the full count.
        #[arg(long)]
        quick: bool,
        /// Print what the cache already holds for this device; tune nothing.
        #[arg(long, conflicts_with_all = ["config", "sets", "quick"])]
        list: bool,
    },
    /// Kernel microbenchmarks (GPU timestamps; GFLOP/s, GB/s, % of the device's ceiling).
    Bench {
        /// Small sizes (software Vulkan, smoke runs).
        #[arg(long)]
        quick: bool,
        /// Only kernels whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Timed runs per kernel (default 10; 3 with --quick).
        #[arg(long)]
        reps: Option<usize>,
        /// Memory ceiling in GB/s (default: known figure for the adapter, else measured copy).
        #[arg(long)]
        peak_gbs: Option<f64>,
        /// f32 arithmetic ceiling in GFLOP/s (default: known figure for the adapter).
        #[arg(long)]
        peak_gflops: Option<f64>,
        /// Also write the rows as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// End-to-end steps of the CREMA-D AUG model instead of kernels (wall clock, queue
        /// drained at both ends; with --quick: a tiny ResNet at batch 4).
        #[arg(long)]
        e2e: bool,
        /// Timed steps of each end-to-end case (median reported; default 20, as performance.md
        /// asks; 5 with --quick).
        #[arg(long)]
        steps: Option<usize>,
        /// Batch size of the end-to-end model (default 64; 4 with --quick). Memory figures
        /// at a smaller batch fit devices with small buffer limits (lavapipe: 128 MiB).
        #[arg(long)]
        batch: Option<usize>,
    },
    /// Run a sweep file: a base config and a grid (methods, seeds, any --set path) expanded
    /// into named runs, `parallel` at once; finished runs are skipped, interrupted ones resumed.
    Sweep {
        /// The sweep file (see sweeps/ and the README).
        file: PathBuf,
        /// Output folder (default: the file's `out`, else runs/sweeps/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Runs at once (default: the file's `parallel`, else 2).
        #[arg(long)]
        parallel: Option<usize>,
        /// Run only this run (0-based; a Slurm array task).
        #[arg(long)]
        task: Option<usize>,
        /// Write a Slurm job array (one run per task) into the output folder instead of running.
        #[arg(long)]
        slurm: bool,
        /// With --slurm: submit it with sbatch.
        #[arg(long, requires = "slurm")]
        submit: bool,
        /// List the runs and check every configuration, run nothing.
        #[arg(long)]
        dry_run: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Seed statistics and paired tests over runs: mean ± std and 95 % CI per setting, paired
    /// differences between settings (t and Wilcoxon), as Markdown, CSV, LaTeX and charts.
    Compare {
        /// Run directories, or folders of runs (a sweep's output).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Figure per run: best_val (default when every run has validation), last, last_k.
        #[arg(long)]
        select: Option<String>,
        /// k of last_k.
        #[arg(long, default_value_t = 5)]
        k: usize,
        /// Pair runs by this configuration value as well as the seed (cross-validation folds,
        /// e.g. `data.test_speakers`): runs differing only in it are one setting.
        #[arg(long)]
        pair_by: Option<String>,
        /// Where to write compare.{md,csv,tex} and the charts (default: the first argument).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Datasets: list what the loaders read and whether it is present; download the public ones.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Charts (PNG + SVG) of a run directory's metrics.jsonl, or a comparison of several runs.
    Report {
        /// Run directories; with more than one, also writes a comparison into --out.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// Where to write the comparison (default: the first run's charts/ folder).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Every dataset kind: what it is, where it comes from, its size, whether it is present
    /// in the data root, and what to do by hand for those that cannot be downloaded.
    List {
        /// Data root (default: $EQUIMODAL_DATA, else the per-user data directory).
        #[arg(long)]
        root: Option<PathBuf>,
    },
    /// Download a dataset's public files into the data root, each verified by SHA-256;
    /// files already present and intact are kept.
    Fetch {
        /// The dataset (`equimodal data list` says which can be downloaded).
        dataset: String,
        /// Data root (default: $EQUIMODAL_DATA, else the per-user data directory).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Download from this address instead of the public sources, laid out like the
        /// data root (<mirror>/fsdd/recordings/..., <mirror>/mnist/...); overrides
        /// EQUIMODAL_DATA_MIRROR. The checksums are still the built-in ones.
        #[arg(long)]
        mirror: Option<String>,
        /// Downloads at once.
        #[arg(long, default_value_t = equimodal::data::fetch::DEFAULT_PARALLEL)]
        parallel: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Write which MNIST image each FSDD clip of an AV-MNIST configuration is paired with, as
    /// CSV (split,index,clip,image,label), for a script outside the engine to train on the
    /// same pairs (bench/torch/avmnist_protocol.py --pairs).
    Pairs {
        /// The configuration (its [data] must be AV-MNIST).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a value (`--set data.seed=3`); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The CSV file to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace --out if it exists.
        #[arg(long)]
        force: bool,
    },
}

fn gpu_options(cli: &Cli) -> equimodal::Result<equimodal::GpuOptions> {
    let mut o = equimodal::GpuOptions::from_env()?;
    if let Some(a) = &cli.adapter {
        o.adapter_name = Some(a.clone());
    }
    if let Some(b) = &cli.backend {
        o.backends = equimodal::gpu::parse_backends("--backend", b)?;
    }
    Ok(o)
}

/// With `EQUIMODAL_PROFILE=1`: GPU time per kernel, summed over everything the process ran.
fn print_profile(gpu: &equimodal::Gpu) {
    let prof = gpu.profile_report();
    if !prof.is_empty() {
        let total: f64 = prof.iter().map(|p| p.2).sum();
        println!("\nGPU time per kernel (EQUIMODAL_PROFILE=1), total {total:.1} ms:");
        for (name, n, ms) in prof.iter().take(40) {
            println!("  {name:<52} {n:>8} launches {ms:>10.1} ms {:>5.1}%", 100.0 * ms / total);
        }
    }
}

/// The global options a sweep passes on to each of its runs.
fn child_args(cli: &Cli) -> equimodal::experiments::ChildArgs {
    let mut v = Vec::new();
    if let Some(a) = &cli.adapter {
        v.extend(["--adapter".to_string(), a.clone()]);
    }
    if let Some(b) = &cli.backend {
        v.extend(["--backend".to_string(), b.clone()]);
    }
    equimodal::experiments::ChildArgs(v)
}

/// compare over `dirs`, written next to them; prints the Markdown.
fn compare_runs(dirs: &[PathBuf], select: Option<equimodal::experiments::Selection>, pair_by: Option<&str>, out: &std::path::Path) -> equimodal::Result<()> {
    use equimodal::experiments as ex;
    let runs = ex::find_runs(dirs)?.iter().map(|d| ex::read_run(d)).collect::<equimodal::Result<Vec<_>>>()?;
    let c = ex::compare::compare_by(&runs, select, pair_by)?;
    let (md, files) = ex::compare::write_all(&c, out)?;
    println!("{md}");
    println!("{} files in {}", files.len(), out.display());
    Ok(())
}

/// `equimodal sweep`: expand, then list (--dry-run), write a Slurm array (--slurm), run one
/// task (--task), or run every run and compare.
fn sweep(cli: &Cli) -> equimodal::Result<()> {
    use equimodal::experiments as ex;
    let Cmd::Sweep { file, out, parallel, task, slurm, submit, dry_run, quiet } = &cli.cmd else { unreachable!("sweep() is called for the sweep command") };
    let mut sw = ex::Sweep::load(file, out.as_deref())?;
    if let Some(p) = *parallel {
        if p == 0 {
            return Err(equimodal::Error::config("--parallel", "must be at least 1"));
        }
        sw.parallel = p;
    }
    let runs = sw.expand()?;
    if *dry_run {
        for r in &runs {
            println!("{:>4}  {}  {}", r.index, r.name, r.sets.join(" "));
        }
        println!("{} runs, all configurations valid; output {}", runs.len(), sw.out.display());
        return Ok(());
    }
    if *slurm {
        let (path, answer) = ex::write_slurm(&sw, runs.len(), &child_args(cli), *submit)?;
        println!("Slurm job array of {} runs: {}", runs.len(), path.display());
        if let Some(a) = answer {
            println!("{a}");
        }
        println!("afterwards: equimodal compare {}", sw.out.display());
        return Ok(());
    }
    if let Some(t) = *task {
        let run = runs.get(t).ok_or_else(|| equimodal::Error::config("--task", format!("{t} is out of range: the sweep has runs 0..{}", runs.len())))?;
        ex::run::claim(&sw)?;
        return match ex::run_one(&sw, run, &child_args(cli))? {
            ex::Outcome::Failed(why) => Err(equimodal::Error::Other(format!("run {} failed: {why}", run.name))),
            o => {
                println!("run {}: {o:?}", run.name);
                Ok(())
            }
        };
    }
    let results = ex::run_all(&sw, &runs, &child_args(cli), !*quiet)?;
    let failed: Vec<&(String, ex::Outcome)> = results.iter().filter(|r| matches!(r.1, ex::Outcome::Failed(_))).collect();
    let skipped = results.iter().filter(|r| r.1 == ex::Outcome::Skipped).count();
    println!("sweep {}: {} runs, {} finished now, {skipped} finished before, {} failed", sw.name, results.len(), results.len() - skipped - failed.len(), failed.len());
    let done: Vec<PathBuf> = runs.iter().map(|r| ex::run::run_dir(&sw, r)).filter(|d| d.join("summary.txt").exists()).collect();
    if !done.is_empty() {
        compare_runs(&done, sw.select, sw.pair_by.as_deref(), &sw.out)?;
    }
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|(n, o)| format!("{n} ({o:?})")).collect();
        return Err(equimodal::Error::Other(format!("{} of {} runs failed: {}", failed.len(), results.len(), list.join("; "))));
    }
    Ok(())
}

/// Counts must be at least 1 and ceilings positive: a zero or NaN would be clamped or
/// divide into nonsense percentages rather than report the mistake. Counts have ceilings
/// too: `--reps` timestamps fill one query set (wgpu allows 4,096 queries), and the steps and
/// the batch size size host allocations before anything runs.
fn check_bench_args(reps: Option<usize>, steps: Option<usize>, batch: Option<usize>, gbs: Option<f64>, gflops: Option<f64>) -> equimodal::Result<()> {
    for (flag, v, max) in [("--reps", reps, 4_000), ("--steps", steps, 10_000), ("--batch", batch, 65_536)] {
        if v == Some(0) {
            return Err(equimodal::Error::config(flag, "must be at least 1"));
        }
        if let Some(v) = v.filter(|v| *v > max) {
            return Err(equimodal::Error::config(flag, format!("must be at most {max}, got {v}")));
        }
    }
    for (flag, v) in [("--peak-gbs", gbs), ("--peak-gflops", gflops)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(equimodal::Error::config(flag, format!("must be a positive number, got {v}")));
        }
    }
    Ok(())
}

fn run(cli: Cli) -> equimodal::Result<()> {
    match &cli.cmd {
        Cmd::Sweep { .. } => sweep(&cli),
        Cmd::Compare { runs, select, k, pair_by, out } => {
            let select = select.as_deref().map(|s| equimodal::experiments::Selection::parse(s, *k, "--select")).transpose()?;
            let out = out.clone().unwrap_or_else(|| runs[0].clone());
            compare_runs(runs, select, pair_by.as_deref(), &out)
        }
        Cmd::Train { .. } => train(&cli),
        Cmd::Eval { checkpoint, sets, probe, out, force } => eval(&cli, checkpoint, sets, *probe, out.as_deref(), *force),
        Cmd::Devices => devices(&cli),
        Cmd::Tune { config, sets, quick, list } => tune(&cli, config.as_deref(), sets, *quick, *list),
        Cmd::Bench { .. } => bench(&cli),
        Cmd::Report { runs, out } => report(runs, out.as_deref()),
        Cmd::Data { cmd } => data(cmd),
    }
}

/// `equimodal train`: one run, then its test table and charts.
fn train(cli: &Cli) -> equimodal::Result<()> {
    let Cmd::Train { config, sets, out, resume, force, allow_config_change, quiet } = &cli.cmd else { unreachable!("train() is called for the train command") };
    let (cfg, text) = equimodal::config::load(config.as_deref(), sets)?;
    let gpu = equimodal::Gpu::new(gpu_options(cli)?)?;
    let out = out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{}-{}", cfg.method.name.as_str(), cfg.data.kind())));
    eprintln!("equimodal: {} on {} ({:?}), run directory {}", cfg.method.name.as_str(), gpu.info().name, gpu.info().backend, out.display());
    let mut opts = equimodal::train::TrainOptions::new(&out);
    opts.resume = *resume;
    opts.force = *force;
    opts.allow_config_change = *allow_config_change;
    opts.progress = !*quiet;
    let summary = equimodal::train::train(&gpu, &cfg, &text, &opts)?;
    println!("\ntest results after {} epochs ({}):", summary.epochs_run, out.display());
    print!("{}", summary.table());
    print_profile(&gpu);
    match equimodal::report::render_report(&out) {
        Ok(files) => println!("charts: {} files in {}", files.len(), out.join("charts").display()),
        Err(e) => eprintln!("warning: charts not written: {e}"),
    }
    Ok(())
}

/// `equimodal tune`: run a configuration's passes with tuning on (full unless --quick), or
/// with --list only show the cached choices; prints the table.
fn tune(cli: &Cli, config: Option<&std::path::Path>, sets: &[String], quick: bool, list: bool) -> equimodal::Result<()> {
    let mut o = gpu_options(cli)?;
    if o.tune == equimodal::TuneMode::Off {
        return Err(equimodal::Error::config("EQUIMODAL_TUNE", "tuning is off; unset EQUIMODAL_TUNE (or set quick or full) to tune"));
    }
    o.tune = if quick { equimodal::TuneMode::Quick } else { equimodal::TuneMode::Full };
    let gpu = equimodal::Gpu::new(o)?;
    let table = if list {
        gpu.tune_table()
    } else {
        let (cfg, _) = equimodal::config::load(config, sets)?;
        eprintln!("equimodal: tuning {} on {} ({:?})", cfg.method.name.as_str(), gpu.info().name, gpu.info().backend);
        equimodal::train::pretune(&gpu, &cfg)?
    };
    print!("{}", equimodal::train::format_tune_table(&gpu, &table));
    Ok(())
}

/// `equimodal eval`: a checkpoint's test table; with `probe`, linear probes and Shapley shares
/// (into `out/probe.json` and its chart when `out` is given; an existing probe.json only with
/// `force`).
fn eval(cli: &Cli, checkpoint: &std::path::Path, sets: &[String], probe: bool, out: Option<&std::path::Path>, force: bool) -> equimodal::Result<()> {
    if let Some(dir) = out {
        let file = dir.join(equimodal::train::probe::PROBE_FILE);
        if file.exists() && !force {
            return Err(equimodal::Error::config("--out", format!("{} exists (a run's own probe, perhaps); pass --force to replace it, or choose another --out", file.display())));
        }
    }
    let gpu = equimodal::Gpu::new(gpu_options(cli)?)?;
    let (summary, val) = equimodal::train::eval_checkpoint(&gpu, checkpoint, sets)?;
    if let Some(v) = val {
        println!("validation: fused acc {:.2}%", 100.0 * v.fused.acc);
    }
    println!("test:");
    print!("{}", summary.table());
    if !probe {
        return Ok(());
    }
    let cfg = equimodal::train::probe::ProbeConfig::default();
    let u = equimodal::train::probe_checkpoint(&gpu, checkpoint, sets, &cfg)?;
    println!("linear probe of the frozen encoders (logistic regression on the training split's features, {} Adam steps; test):", cfg.steps);
    for (n, m) in u.modalities.iter().zip(&u.probe) {
        match m {
            Some(m) => println!("  {n:<10} acc {:>6.2}%  macro-F1 {:.4}", 100.0 * m.acc, m.macro_f1),
            None => println!("  {n:<10} -  (no encoder of this modality)"),
        }
    }
    println!("Shapley contribution to the fused test accuracy (absent modalities' inputs zeroed):");
    for (n, p) in u.modalities.iter().zip(&u.shapley) {
        println!("  {n:<10} {:>+7.2} points", 100.0 * p);
    }
    if let Some(dir) = out {
        let rec = u.record();
        std::fs::create_dir_all(dir).map_err(|e| equimodal::Error::io(dir, e))?;
        rec.write(&dir.join(equimodal::train::probe::PROBE_FILE))?;
        let title = format!("Unimodal metrics (test) - {}", checkpoint.display());
        let charts = dir.join(equimodal::report::CHARTS_DIR);
        let r = equimodal::report::render_probe_with(&rec, &title, &charts, &equimodal::report::ReportOptions::default())?;
        for w in &r.warnings {
            eprintln!("warning: report: {w}");
        }
        println!("{} and {} chart files in {}", equimodal::train::probe::PROBE_FILE, r.files.len(), charts.display());
    }
    Ok(())
}

/// `equimodal devices`: every adapter, then the one the options select.
fn devices(cli: &Cli) -> equimodal::Result<()> {
    let o = gpu_options(cli)?;
    let list = equimodal::gpu::list_adapters(wgpu::Backends::all());
    if list.is_empty() {
        println!("no adapters found (install a Vulkan driver; without a GPU: apt-get install mesa-vulkan-drivers)");
    }
    for a in &list {
        println!("{a}");
    }
    match equimodal::Gpu::new(o) {
        Ok(g) => println!("\nselected: {} ({:?})", g.info().name, g.info().backend),
        Err(e) => println!("\nno adapter selected: {e}"),
    }
    Ok(())
}

fn write_json<T: serde::Serialize>(path: &std::path::Path, rows: &T) -> equimodal::Result<()> {
    let s = serde_json::to_string_pretty(rows).map_err(|e| equimodal::Error::Other(e.to_string()))?;
    std::fs::write(path, s).map_err(|e| equimodal::Error::io(path, e))
}

/// `equimodal bench`: kernel microbenchmarks, or end-to-end steps with `--e2e`.
fn bench(cli: &Cli) -> equimodal::Result<()> {
    let Cmd::Bench { quick, filter, reps, peak_gbs, peak_gflops, json, e2e, steps, batch } = &cli.cmd else { unreachable!("bench() is called for the bench command") };
    check_bench_args(*reps, *steps, *batch, *peak_gbs, *peak_gflops)?;
    let gpu = equimodal::Gpu::new(gpu_options(cli)?)?;
    if *e2e {
        let opts = equimodal::bench::E2eOptions::new(*quick, filter.clone(), *steps);
        let mut size = equimodal::bench::E2eSize::new(*quick);
        if let Some(b) = batch {
            size = size.with_batch(*b);
        }
        let rows = equimodal::bench::run_e2e(&gpu, &opts, equimodal::bench::e2e_cases_sized(&size))?;
        print!("{}", equimodal::bench::format_e2e_table(&gpu, &rows));
        print_profile(&gpu);
        return json.as_deref().map_or(Ok(()), |p| write_json(p, &rows));
    }
    let opts = equimodal::bench::BenchOptions {
        quick: *quick,
        filter: filter.clone(),
        peak_gbs: *peak_gbs,
        peak_gflops: *peak_gflops,
        reps: reps.unwrap_or(if *quick { 3 } else { 10 }).max(1),
        warmup: if *quick { 1 } else { 3 },
    };
    let rows = equimodal::bench::run(&gpu, &opts, equimodal::bench::extra_cases(*quick))?;
    print!("{}", equimodal::bench::format_table(&gpu, &rows, gpu.capabilities().timestamps));
    json.as_deref().map_or(Ok(()), |p| write_json(p, &rows))
}

/// `equimodal report`: charts of each run, and a comparison when there are several.
fn report(runs: &[PathBuf], out: Option<&std::path::Path>) -> equimodal::Result<()> {
    for r in runs {
        let files = equimodal::report::render_report(r)?;
        println!("{}: {} files in {}", r.display(), files.len(), r.join("charts").display());
    }
    if runs.len() > 1 {
        let out = out.map(PathBuf::from).unwrap_or_else(|| runs[0].join("charts"));
        let refs: Vec<&std::path::Path> = runs.iter().map(|p| p.as_path()).collect();
        let files = equimodal::report::render_comparison(&refs, &out)?;
        println!("comparison: {} files in {}", files.len(), out.display());
    }
    Ok(())
}

/// `equimodal data list` and `equimodal data fetch`.
fn data(cmd: &DataCmd) -> equimodal::Result<()> {
    use equimodal::data::catalog;
    let root_of = |r: &Option<PathBuf>| r.clone().unwrap_or_else(catalog::default_data_root);
    match cmd {
        DataCmd::List { root } => {
            let from = if root.is_some() {
                "--root"
            } else if std::env::var_os("EQUIMODAL_DATA").is_some_and(|v| !v.is_empty()) {
                "$EQUIMODAL_DATA"
            } else {
                "the per-user default"
            };
            print!("{}", data_list(&root_of(root), from)?);
            Ok(())
        }
        DataCmd::Fetch { dataset, root, mirror, parallel, quiet } => {
            if *parallel == 0 {
                return Err(equimodal::Error::config("--parallel", "must be at least 1"));
            }
            let mirror = mirror.clone().or_else(|| std::env::var("EQUIMODAL_DATA_MIRROR").ok().filter(|m| !m.is_empty()));
            let manifest = catalog::manifest(dataset, mirror.as_deref())?;
            let root = root_of(root);
            eprintln!("equimodal: fetching {dataset} ({} files, {}) into {}", manifest.files.len(), mib(manifest.total_bytes()), root.display());
            let opts = equimodal::data::fetch::FetchOptions { progress: !*quiet, parallel: *parallel };
            let r = equimodal::data::fetch::fetch(&manifest, &root, &opts)?;
            println!(
                "{dataset}: {} files downloaded ({}), {} replaced, {} already present and verified; data root {}",
                r.downloaded,
                mib(r.bytes),
                r.replaced,
                r.present,
                root.display()
            );
            Ok(())
        }
        DataCmd::Pairs { config, sets, out, force } => data_pairs(config.as_deref(), sets, out, *force),
    }
}

/// `equimodal data pairs`: AV-MNIST's clip-image pairing of a configuration, as CSV into `out`
/// (an existing file only with `force`).
fn data_pairs(config: Option<&std::path::Path>, sets: &[String], out: &std::path::Path, force: bool) -> equimodal::Result<()> {
    use equimodal::data::{avmnist::AvmnistDataset, DatasetConfig};
    let (cfg, _) = equimodal::config::load(config, sets)?;
    let DatasetConfig::Avmnist(c) = &cfg.data else {
        return Err(equimodal::Error::config("data.kind", format!("`data pairs` lists AV-MNIST's clip-image pairs; this configuration's dataset is `{}`", cfg.data.kind())));
    };
    if out.exists() && !force {
        return Err(equimodal::Error::config("--out", format!("{} exists; pass --force to replace it", out.display())));
    }
    let ds = AvmnistDataset::new(c)?;
    let csv = ds.pairs_csv();
    equimodal::train::checkpoint::write_atomic(out, csv.as_bytes())?;
    println!("{}: {} pairs", out.display(), csv.lines().count() - 1);
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The `data list` table: each dataset, its source, size, presence under `root`, and how to
/// obtain it.
fn data_list(root: &std::path::Path, from: &str) -> equimodal::Result<String> {
    use equimodal::data::catalog::{self, Fetch};
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "data root: {} ({from})\n", root.display());
    for d in catalog::catalogue() {
        let _ = writeln!(s, "{}\n  what:    {}\n  source:  {}", d.name, d.what, d.source);
        match &d.fetch {
            Fetch::Download => {
                let m = catalog::manifest(d.name, None)?;
                let (have, n) = (m.present(root), m.files.len());
                let state = if have == n { "present".to_string() } else if have == 0 { "absent".to_string() } else { format!("incomplete: {have} of {n} files") };
                let _ = writeln!(s, "  size:    {} in {n} files\n  status:  {state}\n  get it:  equimodal data fetch {}", mib(m.total_bytes()), d.name);
            }
            Fetch::ByHand(how) => {
                let _ = writeln!(s, "  status:  not downloadable automatically\n  get it:  {how}");
            }
            Fetch::Nothing(why) => {
                let _ = writeln!(s, "  get it:  {why}");
            }
        }
        s.push('\n');
    }
    Ok(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
