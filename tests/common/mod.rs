//! Shared test harness: one GPU context per test binary (lavapipe on CI), seeded inputs,
//! CPU f64 references and finite-difference gradient checks.
#![allow(dead_code)]
pub mod resume;
use equimodal::{Gpu, GpuOptions, Tensor};
use std::sync::OnceLock;

pub fn gpu() -> Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let mut o = GpuOptions::default();
        // Tests always run kernels with runtime bounds checks too, unless asked otherwise.
        if std::env::var("EQUIMODAL_CHECKED_KERNELS").is_err() {
            o.checked_kernels = true;
        }
        Gpu::new(o).expect("a GPU adapter (on CI: Mesa lavapipe, apt-get install mesa-vulkan-drivers)")
    })
    .clone()
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

/// Tolerances of an op check.
#[derive(Clone, Copy)]
pub struct Tol {
    pub rtol: f64,
    pub atol: f64,
    pub grad_rtol: f64,
    pub grad_atol: f64,
}
impl Default for Tol {
    fn default() -> Self {
        Tol { rtol: 1e-4, atol: 1e-5, grad_rtol: 2e-3, grad_atol: 2e-4 }
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
    let out = gpu_f(&ts).unwrap_or_else(|e| panic!("{name}: {e}"));
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
    for &i in diff {
        let gt = grads.get(&ts[i]).unwrap_or_else(|| panic!("{name}: no gradient for input {i}"));
        assert_eq!(gt.shape(), ts[i].shape(), "{name}: gradient shape of input {i}");
        let fd = fd_grad(cpu_f, &xs, &w, i, 1e-6);
        assert_close(&format!("{name} d/dinput{i}"), &gt.to_vec().unwrap(), &fd, tol.grad_rtol, tol.grad_atol);
    }
}
