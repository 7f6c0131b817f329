//! Every quick benchmark case runs once (reps 1, no warm-up), so a case broken by an API
//! change fails here rather than on the GPU machine; plus the conv shape table and the FLOP
//! counts the rates are computed from.
mod common;
use common::*;
use equimodal::bench::{self, BenchOptions, E2eOptions};
use std::sync::Mutex;

// one case at a time: the cases are large for lavapipe and share the device
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn every_quick_kernel_case_runs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu();
    let opts = BenchOptions { quick: true, reps: 1, warmup: 0, ..Default::default() };
    let mut all = bench::cases(true);
    all.extend(bench::extra_cases(true));
    let mut names = std::collections::HashSet::new();
    for case in &all {
        assert!(names.insert(case.name.clone()), "duplicate case name {}", case.name);
        assert!(case.bytes > 0.0, "{}: no byte count", case.name);
        if !(case.runs_on)(&gpu) {
            // only matmul variants (cooperative matrices, workgroup memory) and the
            // cooperative-matrix convolution rows depend on the device
            assert!(case.name.starts_with("matmul_") || case.name.ends_with(":coop"), "{} does not run on {}", case.name, gpu.info().name);
            continue;
        }
        let ms = bench::time_case(&gpu, case, &opts).unwrap_or_else(|e| panic!("case {} failed: {e}", case.name));
        assert!(ms.is_finite() && ms >= 0.0, "{}: {ms} ms", case.name);
    }
    // every family is present
    for prefix in [
        "matmul_n", "matmul_ta_", "matmul_tb_", "linear_", "conv_v_", "conv_a_", "conv_ref", "attn_", "softmax_", "xent_fb",
        "layer_norm_", "batch_norm_", "max_pool_", "sgd_step", "adam_step", "concat_", "permute_",
    ] {
        assert!(all.iter().any(|c| c.name.starts_with(prefix)), "no case named {prefix}*");
    }
    // every matmul variant the tuner may pick has its own rows (square and split-K shapes)
    for k in equimodal::ops::MatmulKernel::TUNED {
        for base in ["matmul_n128", "matmul_dw_64x64_k2048"] {
            let name = format!("{base}:{}", k.name());
            assert!(names.contains(&name), "no case {name}");
        }
    }
    // and the rows come out of `run` with rates
    let rows = bench::run(&gpu, &BenchOptions { filter: Some("matmul_n128".into()), ..opts.clone() }, bench::extra_cases(true)).unwrap();
    let mm = rows.iter().find(|r| r.name == "matmul_n128").expect("matmul_n128 row");
    assert!(mm.gflops.is_some_and(|g| g > 0.0));
    assert!(bench::format_table(&gpu, &rows, true).contains("matmul_n128"));
}

#[test]
fn quick_e2e_cases_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let gpu = gpu();
    let opts = E2eOptions { filter: None, steps: 1, warmup: 0 };
    let rows = bench::run_e2e(&gpu, &opts, bench::e2e_cases(true)).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["aug_step", "aug_step_recompute", "aug_step_mixed", "eval_forward", "eval_forward_mixed", "joint_step", "audio_resnet18_step"]);
    for r in &rows {
        assert!(r.median_ms > 0.0 && r.pool_mib > 0.0 && r.dispatches_per_step > 0.0, "{r:?}");
    }
    // the same step holding one activation fewer per ResNet block
    let (plain, recompute) = (&rows[0], &rows[1]);
    assert!(recompute.peak_allocated_mib < plain.peak_allocated_mib, "{plain:?}\n{recompute:?}");
    assert!(bench::format_e2e_table(&gpu, &rows).contains("aug_step"));
}

#[test]
fn resnet18_conv_shapes_match_the_network() {
    let v = bench::resnet18_conv_shapes(3, 224, 224, 64);
    let names: Vec<&str> = v.iter().map(|s| s.layer.as_str()).collect();
    assert_eq!(names, ["conv1", "l1", "l2.0", "l2.down", "l2", "l3.0", "l3.down", "l3", "l4.0", "l4.down", "l4"]);
    let at = |v: &[bench::ConvShape], l: &str| v.iter().find(|s| s.layer == l).cloned().unwrap();
    assert_eq!(at(&v, "conv1").out_hw(), (112, 112));
    assert_eq!((at(&v, "l1").h, at(&v, "l1").cin, at(&v, "l1").cout), (56, 64, 64));
    assert_eq!(at(&v, "l2.0").out_hw(), (28, 28));
    assert_eq!(at(&v, "l2.down").out_hw(), (28, 28));
    assert_eq!((at(&v, "l2").h, at(&v, "l2").cin, at(&v, "l2").k), (28, 128, 3));
    assert_eq!((at(&v, "l4").h, at(&v, "l4").w, at(&v, "l4").cout), (7, 7, 512));
    // the performance.md reference conv is visual layer2: 3×3, 128→128, 28×28; at batch 64
    // 2·(64·28·28)·128·(128·9) = 14.8 GFLOP forward
    let l2 = at(&v, "l2");
    assert_eq!(l2.fwd_flops(64), 2.0 * (64.0 * 784.0) * 128.0 * 1152.0);

    // audio 1×257×188: stem 129×94, pool 65×47, then 33×24, 17×12, 9×6
    let a = bench::resnet18_conv_shapes(1, 257, 188, 64);
    assert_eq!(at(&a, "conv1").out_hw(), (129, 94));
    assert_eq!((at(&a, "l1").h, at(&a, "l1").w), (65, 47));
    assert_eq!((at(&a, "l2").h, at(&a, "l2").w), (33, 24));
    assert_eq!((at(&a, "l3").h, at(&a, "l3").w), (17, 12));
    assert_eq!((at(&a, "l4").h, at(&a, "l4").w), (9, 6));
}

#[test]
fn flop_and_byte_counts() {
    let find = |cases: &[bench::Case], n: &str| {
        let c = cases.iter().find(|c| c.name == n).unwrap_or_else(|| panic!("no case {n}"));
        (c.flops, c.bytes)
    };
    let full = bench::extra_cases(false);
    assert_eq!(find(&full, "matmul_n8192"), (2.0 * 8192f64.powi(3), 12.0 * 8192f64.powi(2)));
    assert_eq!(find(&full, "matmul_ta_n4096").0, 2.0 * 4096f64.powi(3));
    assert_eq!(find(&full, "linear_b64_512to256").0, 2.0 * 64.0 * 512.0 * 256.0);
    // conv: fwd+bwd = 3 × fwd
    let (f, _) = find(&full, "conv_ref_3x3_128_fb");
    assert_eq!(f, 3.0 * 2.0 * (64.0 * 784.0) * 128.0 * 1152.0);
    let (fv, _) = find(&full, "conv_v_l2_fwd");
    assert_eq!(3.0 * fv, f);
    // attention: 4·B·H·L·S·Dh forward, 3.5× that forward+backward
    let fwd = 4.0 * 64.0 * 8.0 * 1024.0 * 1024.0 * 64.0;
    assert_eq!(find(&full, "attn_L1024_fwd").0, fwd);
    assert_eq!(find(&full, "attn_L1024_fb").0, 3.5 * fwd);
    // f16 operands on the tiles and on cooperative matrices count the same work
    for kernel in ["tile", "coop"] {
        assert_eq!(find(&full, &format!("attn_L1024_d64_fwd_f16:{kernel}")).0, fwd);
        assert_eq!(find(&full, &format!("attn_L1024_d64_fb_f16:{kernel}")).0, 3.5 * fwd);
    }
    assert_eq!(find(&full, "sgd_step").1, 20.0 * 11_176_512.0);
    // ResNet18's 11 distinct shapes, forward and fwd+bwd, both modalities; then three
    // fwd+bwd shapes (the reference and the small CNN's first two layers), each on the
    // chosen tiles and on each tile (the strided ones and the GEMM core's), guarded and in
    // its interior form; then three shapes on f16 operands, on the 128 x 64 tile and on
    // cooperative matrices, forward and forward + backward
    let tiles = equimodal::gpu::ConvTile::ALL.len();
    assert_eq!(full.iter().filter(|c| c.name.starts_with("conv_")).count(), 2 * 2 * 11 + 3 * (1 + 2 * tiles) + 3 * 2 * 2);
    assert!(full.iter().any(|c| c.name == "conv_ref_3x3_128_fb:g128x128"), "a row per core tile");
    assert!(full.iter().any(|c| c.name == "conv_ref_3x3_128_fb:g128x64i"), "a row per interior form");
    assert_eq!(find(&full, "conv_ref_3x3_128_fb:128x64i").0, f, "an interior form's row counts the same work");
    let (fh, _) = find(&full, "conv_ref_3x3_128_fwd_f16:coop");
    assert_eq!((fh, find(&full, "conv_ref_3x3_128_fwd_f16:128x64").0), (f / 3.0, f / 3.0));
    assert_eq!(find(&full, "conv_ref_3x3_128_fb_f16:coop").0, f);
    let (fn8, _) = find(&full, "conv_narrow_1to8_fb:32x16");
    assert_eq!(fn8, find(&full, "conv_narrow_1to8_fb").0, "a tile's row counts the same work");
    assert_eq!(find(&full, "conv_narrow_1to8_fb:g64x16").0, fn8, "a core tile's row too");
}

/// Every Python script the GPU runs (the PyTorch references, `bench/torch/` and `scripts/`)
/// parses: they import PyTorch, which this machine and CI lack, so a syntax error would
/// otherwise first show during a GPU session. (Their PyTorch-free parts, `pairs.py`, run in
/// `tests/data/pairs.rs`.)
#[test]
fn every_python_script_parses() {
    let root = &repo_root();
    let mut files = Vec::new();
    for dir in ["bench/torch", "scripts"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "py") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    let check = "import ast, sys\nfor f in sys.argv[1:]:\n    ast.parse(open(f).read(), f)\n";
    let out = match std::process::Command::new("python3").arg("-c").arg(check).args(&files).output() {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: no python3 to parse the scripts with ({e})");
            return;
        }
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
