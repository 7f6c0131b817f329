//! Shared test harness: one GPU context per test binary (lavapipe on CI), seeded inputs,
//! CPU f64 references (`cpu_nn`: the ones several files share) and finite-difference
//! gradient checks.
#![allow(dead_code)]
pub mod cpu_nn;
pub mod recorder;
pub mod resume;
use equimodal::{Gpu, GpuOptions, Tensor};
use std::sync::OnceLock;

/// Options of every test GPU context: runtime bounds checks on, the pool canary on
/// (every pooled buffer's slack beyond its tensor holds a NaN sentinel that `check_op`
/// verifies after each op), and tuned choices kept in memory, unless the environment says
/// otherwise.
pub fn test_options() -> GpuOptions {
    let mut o = GpuOptions::default();
    if std::env::var("EQUIMODAL_CHECKED_KERNELS").is_err() {
        o.checked_kernels = true;
    }
    if std::env::var("EQUIMODAL_POOL_CANARY").is_err() {
        o.pool_canary = true;
    }
    // a variant the tuner's probe finds wrong fails the test that tuned it
    o.strict_probe = true;
    // Tuning stays on (its default, so the suite runs what users run), its choices in this
    // process only: a test never reads or writes the user's cache file.
    if std::env::var("EQUIMODAL_TUNE_CACHE").is_err() {
        o.tune_cache = equimodal::TuneStore::Memory;
    }
    o
}

/// The checkout the tests read files from: where they were built, or, where that path is
/// not there (test binaries carried to the GPU machine by `scripts/prepare_gpu_run.sh`), the
/// working directory, which `scripts/gpu_bench.sh` sets to the checkout's root.
pub fn repo_root() -> std::path::PathBuf {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if built.join("Cargo.toml").is_file() {
        built.to_path_buf()
    } else {
        std::env::current_dir().expect("a working directory")
    }
}

/// The `equimodal` binary as a child process, its tuning cache in a file of this test
/// process (never the user's cache; shared by the children, so they choose alike). The one
/// cargo built, or where that is not there (on the GPU machine), `$EQUIMODAL_BIN`.
pub fn equimodal_bin() -> std::process::Command {
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_equimodal"));
    let exe = match std::env::var_os("EQUIMODAL_BIN") {
        Some(b) if !built.is_file() => std::path::PathBuf::from(b),
        _ => built.to_path_buf(),
    };
    let mut c = std::process::Command::new(exe);
    if std::env::var_os("EQUIMODAL_TUNE_CACHE").is_none() {
        c.env("EQUIMODAL_TUNE_CACHE", std::env::temp_dir().join(format!("equimodal-test-tune-{}.json", std::process::id())));
    }
    c
}

fn new_gpu(o: GpuOptions) -> Gpu {
    Gpu::new(o).expect("a GPU adapter (on CI: Mesa lavapipe, apt-get install mesa-vulkan-drivers)")
}

thread_local! {
    // A test thread inside `with_workgroup_cap` gets the capped context from `gpu()`.
    static OVERRIDE: std::cell::RefCell<Option<Gpu>> = const { std::cell::RefCell::new(None) };
}

/// The test binary's GPU context (or the capped one inside [`with_workgroup_cap`]).
pub fn gpu() -> Gpu {
    if let Some(g) = OVERRIDE.with(|o| o.borrow().clone()) {
        return g;
    }
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| new_gpu(test_options())).clone()
}

/// Run `f` with `gpu()` returning a context whose grids use at most `cap` workgroups per
/// dimension (`GpuOptions::max_workgroups_per_dim`), so small tensors take the folded 2-D
/// grids and split launches that the adapter's limit (65,535) leaves to huge tensors.
/// One context per cap and test binary.
pub fn with_workgroup_cap<R>(cap: u32, f: impl FnOnce() -> R) -> R {
    static CAPPED: OnceLock<std::sync::Mutex<Vec<(u32, Gpu)>>> = OnceLock::new();
    let g = {
        let mut v = CAPPED.get_or_init(Default::default).lock().unwrap();
        match v.iter().find(|(c, _)| *c == cap) {
            Some((_, g)) => g.clone(),
            None => {
                let mut o = test_options();
                o.max_workgroups_per_dim = Some(cap);
                let g = new_gpu(o);
                v.push((cap, g.clone()));
                g
            }
        }
    };
    assert_eq!(g.max_workgroups_per_dim(), cap, "the adapter allows fewer workgroups than the cap");
    struct Reset(Option<Gpu>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let prev = self.0.take();
            OVERRIDE.with(|o| *o.borrow_mut() = prev);
        }
    }
    let _reset = Reset(OVERRIDE.with(|o| o.borrow_mut().replace(g)));
    f()
}

/// Fail (naming `what`) if a kernel wrote into the slack beyond any pooled tensor since
/// the last check (canary mode, on in tests unless `EQUIMODAL_POOL_CANARY=0`).
pub fn assert_canaries(what: &str) {
    let g = gpu();
    if let Err(e) = g.check_canaries() {
        panic!("{what}: {e}");
    }
}

/// Small seeded generator (SplitMix64), independent of any crate's stream.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
    pub fn uniforms(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Broadcast shape (numpy rules) of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            da.max(db)
        })
        .collect()
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Upload f64 data (rounded to f32) as a tensor.
pub fn upload(gpu: &Gpu, data: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_slice(gpu, &to_f32(data), shape).unwrap()
}

/// |got - want| <= atol + rtol * |want| elementwise, with a message naming the op and index.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let tol = atol + rtol * w.abs();
        assert!(g.is_finite() || !w.is_finite(), "{what}[{i}]: got {g}, want {w}");
        if err > tol {
            panic!("{what}[{i}]: got {g}, want {w} (err {err:.3e} > tol {tol:.3e})");
        }
        if err > worst.1 {
            worst = (i, err);
        }
    }
}

/// Round-trip through f32, as the GPU sees the inputs.
pub fn round_f32(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

/// Central finite differences of `sum(w * f(inputs))` with respect to input `which`, in f64.
pub fn fd_grad(f: &dyn Fn(&[Vec<f64>]) -> Vec<f64>, inputs: &[Vec<f64>], w: &[f64], which: usize, eps: f64) -> Vec<f64> {
    let mut xs: Vec<Vec<f64>> = inputs.to_vec();
    let n = xs[which].len();
    let mut g = vec![0.0; n];
    for i in 0..n {
        let x0 = xs[which][i];
        xs[which][i] = x0 + eps;
        let fp: f64 = f(&xs).iter().zip(w).map(|(a, b)| a * b).sum();
        xs[which][i] = x0 - eps;
        let fm: f64 = f(&xs).iter().zip(w).map(|(a, b)| a * b).sum();
        xs[which][i] = x0;
        g[i] = (fp - fm) / (2.0 * eps);
    }
    g
}

/// Tolerances of an op check: |got - want| <= atol + rtol |want| per element, forward and
/// gradients (vs f64 central differences, eps 1e-6: accurate to ~1e-10 of the gradient's
/// scale, so the tolerance is all f32 arithmetic).
///
/// Derived from the arithmetic (f32 unit roundoff u = 2^-24 ~ 6e-8):
/// - `Tol::default()`, element-wise ops and short reductions: each output is a handful of
///   f32 operations (GPU transcendentals: a few ulp), i.e. ~1e-6 relative at worst; 1e-5
///   leaves a 10x margin, and atol 1e-6 covers values that cancel to near zero. A gradient
///   rounded through f16 (4.9e-4 relative) fails it; the old 2e-3 let it pass.
/// - [`Tol::sums`], outputs that are sums of K terms: rounding errors of a sum add up like a
///   random walk, ~u sqrt(K) relative to the sum's own scale, so atol = 1e-6 sqrt(K) times
///   that scale (u sqrt(K) with a 16x margin).
///
/// Any looser tolerance at a call site says why beside it.
#[derive(Clone, Copy)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
    pub grad_rtol: f64,
    pub grad_atol: f64,
}
impl Default for Tol {
    fn default() -> Self {
        Tol { rtol: 1e-5, atol: 1e-6, grad_rtol: 1e-5, grad_atol: 1e-6 }
    }
}
impl Tol {
    /// Forward outputs summing `k_fwd` terms at output scale `fwd_scale`, gradients summing
    /// `k_grad` terms at gradient scale `grad_scale` (scales: typical magnitude of the
    /// result, e.g. sqrt(K) for K products of unit-size values).
    pub fn sums(k_fwd: usize, fwd_scale: f64, k_grad: usize, grad_scale: f64) -> Tol {
        let a = |k: usize, scale: f64| 1e-6 * (k.max(1) as f64).sqrt() * scale;
        Tol { rtol: 1e-5, atol: a(k_fwd, fwd_scale), grad_rtol: 1e-5, grad_atol: a(k_grad, grad_scale) }
    }
}

/// Check an op on the GPU against its CPU f64 reference:
/// 1. forward: GPU output vs `cpu(inputs)` (inputs rounded to f32 first);
/// 2. backward: GPU gradients of `sum(w * out)` (w random) for each input in `diff`
///    vs central finite differences of the f64 reference.
pub fn check_op(
    name: &str,
    inputs: &[(Vec<f64>, Vec<usize>)],
    diff: &[usize],
    gpu_f: &dyn Fn(&[Tensor]) -> equimodal::Result<Tensor>,
    cpu_f: &dyn Fn(&[Vec<f64>]) -> Vec<f64>,
    tol: Tol,
) {
    let g = gpu();
    let xs: Vec<Vec<f64>> = inputs.iter().map(|(d, _)| round_f32(d)).collect();
    let ts: Vec<Tensor> = inputs
        .iter()
        .enumerate()
        .map(|(i, (d, s))| {
            let t = upload(&g, d, s);
            if diff.contains(&i) {
                t.requires_grad()
            } else {
                t
            }
        })
        .collect();
    // Slack written by earlier work of this thread's context is not this op's fault.
    g.check_canaries().unwrap_or_else(|e| panic!("{name}: before the op: {e}"));
    let out = gpu_f(&ts).unwrap_or_else(|e| panic!("{name}: {e}"));
    // the forward (and every kernel it launched, intermediates included) left every slack alone
    assert_canaries(&format!("{name} forward"));
    let want = cpu_f(&xs);
    let got = out.to_vec().unwrap();
    assert_close(&format!("{name} forward"), &got, &want, tol.rtol, tol.atol);
    if diff.is_empty() {
        return;
    }
    let mut rng = Rng::new(0xBAC0 + name.len() as u64);
    let w = round_f32(&rng.uniforms(want.len(), -1.0, 1.0));
    let seed = upload(&g, &w, out.shape());
    let mut grads = equimodal::Gradients::new();
    out.backward_with(seed, &mut grads).unwrap_or_else(|e| panic!("{name} backward: {e}"));
    assert_canaries(&format!("{name} backward"));
    for &i in diff {
        let gt = grads.get(&ts[i]).unwrap_or_else(|| panic!("{name}: no gradient for input {i}"));
        assert_eq!(gt.shape(), ts[i].shape(), "{name}: gradient shape of input {i}");
        let fd = fd_grad(cpu_f, &xs, &w, i, 1e-6);
        assert_close(&format!("{name} d/dinput{i}"), &gt.to_vec().unwrap(), &fd, tol.grad_rtol, tol.grad_atol);
    }
}
