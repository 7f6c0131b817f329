//! PCA on the CPU: covariance (sparse-aware accumulation), symmetric eigen-decomposition by
//! Householder tridiagonalisation + implicit symmetric QR with Wilkinson shifts. The QR
//! rotations are recorded so that eigenvectors are formed only for the components that are
//! kept (O(n²) each) instead of accumulating the full n×n basis.

use crate::error::{Error, Result};

/// Eigen-decomposition of a real symmetric matrix; eigenvectors are formed on demand.
pub struct SymEigen {
    n: usize,
    /// Eigenvalues in descending order.
    pub values: Vec<f64>,
    /// Column of the tridiagonal eigenbasis each sorted eigenvalue belongs to.
    order: Vec<usize>,
    /// Householder reflectors (offset, v, beta), applied as H = I - beta v vᵀ on `offset..n`.
    reflectors: Vec<(usize, Vec<f64>, f64)>,
    /// Recorded QR rotations (k, c, s) acting on coordinates (k, k+1).
    rotations: Vec<(u32, f64, f64)>,
}

impl SymEigen {
    /// Decompose the symmetric `n × n` row-major matrix `a` (only symmetric input is valid).
    pub fn new(mut a: Vec<f64>, n: usize) -> Result<Self> {
        if a.len() != n * n {
            return Err(Error::shape(
                "SymEigen::new",
                format!("{} values for a {n}x{n} matrix", a.len()),
            ));
        }
        let anorm = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let reflectors = tridiagonalize(&mut a, n);
        let mut d: Vec<f64> = (0..n).map(|i| a[i * n + i]).collect();
        let mut e: Vec<f64> = (0..n.saturating_sub(1)).map(|i| a[i * n + i + 1]).collect();
        drop(a);
        let rotations = tridiagonal_qr(&mut d, &mut e, anorm)?;
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&i, &j| d[j].partial_cmp(&d[i]).unwrap_or(std::cmp::Ordering::Equal));
        let values = order.iter().map(|&i| d[i]).collect();
        Ok(SymEigen {
            n,
            values,
            order,
            reflectors,
            rotations,
        })
    }

    /// Unit eigenvector of the `rank`-th largest eigenvalue.
    pub fn vector(&self, rank: usize) -> Vec<f64> {
        let mut z = vec![0.0f64; self.n];
        z[self.order[rank]] = 1.0;
        for &(k, c, s) in self.rotations.iter().rev() {
            let k = k as usize;
            let (a, b) = (z[k], z[k + 1]);
            z[k] = c * a - s * b;
            z[k + 1] = s * a + c * b;
        }
        for (off, v, beta) in self.reflectors.iter().rev() {
            let t = &mut z[*off..];
            let dot: f64 = t.iter().zip(v).map(|(a, b)| a * b).sum();
            let f = beta * dot;
            for (ti, vi) in t.iter_mut().zip(v) {
                *ti -= f * vi;
            }
        }
        z
    }
}

/// 1. Householder tridiagonalisation of the symmetric `n × n` matrix `a`, in place (its
/// diagonal and first off-diagonal then hold the tridiagonal); returns the reflectors.
fn tridiagonalize(a: &mut [f64], n: usize) -> Vec<(usize, Vec<f64>, f64)> {
    let mut reflectors = Vec::new();
    for k in 0..n.saturating_sub(2) {
        let off = k + 1;
        let len = n - off;
        let x: Vec<f64> = (off..n).map(|j| a[k * n + j]).collect();
        let sigma: f64 = x.iter().map(|v| v * v).sum();
        if sigma == 0.0 {
            continue;
        }
        let x0 = x[0];
        let alpha = if x0 >= 0.0 {
            -sigma.sqrt()
        } else {
            sigma.sqrt()
        };
        let mut v = x;
        v[0] -= alpha;
        let vtv = 2.0 * (sigma - alpha * x0);
        if vtv <= 0.0 {
            continue;
        }
        let beta = 2.0 / vtv;
        // p = beta * A22 v
        let mut p = vec![0.0f64; len];
        for i in 0..len {
            let row = &a[(off + i) * n + off..(off + i) * n + n];
            let s: f64 = row.iter().zip(&v).map(|(r, vv)| r * vv).sum();
            p[i] = beta * s;
        }
        let kk = 0.5 * beta * p.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>();
        let w: Vec<f64> = p.iter().zip(&v).map(|(pi, vi)| pi - kk * vi).collect();
        for i in 0..len {
            let (vi, wi) = (v[i], w[i]);
            let row = &mut a[(off + i) * n + off..(off + i) * n + n];
            for j in 0..len {
                row[j] -= vi * w[j] + wi * v[j];
            }
        }
        a[k * n + off] = alpha;
        a[off * n + k] = alpha;
        for j in off + 1..n {
            a[k * n + j] = 0.0;
            a[j * n + k] = 0.0;
        }
        reflectors.push((off, v, beta));
    }
    reflectors
}

/// 2. Implicit symmetric QR on the tridiagonal (`d` diagonal, `e` off-diagonal) until every
/// off-diagonal value is negligible against its neighbours or `anorm`, the largest
/// magnitude of the input matrix; `d` then holds the eigenvalues. Returns the rotations.
fn tridiagonal_qr(d: &mut [f64], e: &mut [f64], anorm: f64) -> Result<Vec<(u32, f64, f64)>> {
    let n = d.len();
    let eps = f64::EPSILON;
    let mut rotations: Vec<(u32, f64, f64)> = Vec::new();
    let max_iter = 50 * n.max(1);
    let mut iter = 0;
    loop {
        for i in 0..e.len() {
            if e[i].abs() <= eps * (d[i].abs() + d[i + 1].abs())
                || e[i].abs() <= eps * 1e-2 * anorm
            {
                e[i] = 0.0;
            }
        }
        let mut hi = n.saturating_sub(1);
        while hi > 0 && e[hi - 1] == 0.0 {
            hi -= 1;
        }
        if hi == 0 {
            break;
        }
        let mut lo = hi - 1;
        while lo > 0 && e[lo - 1] != 0.0 {
            lo -= 1;
        }
        iter += 1;
        if iter > max_iter {
            return Err(Error::Other(format!(
                "symmetric eigen-decomposition ({n}x{n}) did not converge"
            )));
        }
        qr_sweep(d, e, lo, hi, &mut rotations);
    }
    Ok(rotations)
}

/// One implicit QR step with a Wilkinson shift on the unreduced block `lo..=hi`, recording
/// its rotations.
fn qr_sweep(d: &mut [f64], e: &mut [f64], lo: usize, hi: usize, rotations: &mut Vec<(u32, f64, f64)>) {
    // Wilkinson shift from the trailing 2x2 block.
    let dd = 0.5 * (d[hi - 1] - d[hi]);
    let bb = e[hi - 1];
    let sgn = if dd >= 0.0 { 1.0 } else { -1.0 };
    let mu = d[hi] - bb * bb / (dd + sgn * dd.hypot(bb));
    let mut x = d[lo] - mu;
    let mut z = e[lo];
    for k in lo..hi {
        let r = x.hypot(z);
        let (c, s) = if r == 0.0 { (1.0, 0.0) } else { (x / r, z / r) };
        if k > lo {
            e[k - 1] = r;
        }
        let (p, q, ek) = (d[k], d[k + 1], e[k]);
        d[k] = c * c * p + 2.0 * c * s * ek + s * s * q;
        d[k + 1] = s * s * p - 2.0 * c * s * ek + c * c * q;
        e[k] = c * s * (q - p) + (c * c - s * s) * ek;
        if k + 1 < hi {
            z = s * e[k + 1];
            e[k + 1] *= c;
        }
        x = e[k];
        rotations.push((k as u32, c, s));
    }
}

/// PCA projection onto the leading components.
#[derive(Debug, Clone)]
pub struct Pca {
    /// Length of the vectors it projects.
    pub dim: usize,
    /// Mean of the fitted data, subtracted before projecting.
    pub mean: Vec<f32>,
    /// `k` unit components, each of length `dim`.
    pub components: Vec<Vec<f32>>,
    /// Fraction of the total variance the kept components hold.
    pub energy_kept: f64,
    /// All eigenvalues (descending) of the scatter matrix.
    pub eigenvalues: Vec<f64>,
}

impl Pca {
    /// Fit on `n` rows of length `dim` (row-major `data`), keeping the fewest leading
    /// components whose eigenvalues hold at least `energy` of the total variance
    /// (numpy reference: `k = searchsorted(cumsum(S²)/sum(S²), energy) + 1`).
    pub fn fit(data: &[f32], n: usize, dim: usize, energy: f64) -> Result<Pca> {
        if n == 0 || dim == 0 || n.checked_mul(dim) != Some(data.len()) {
            return Err(Error::shape(
                "Pca::fit",
                format!("{} values for {n} rows of {dim}", data.len()),
            ));
        }
        if !(energy > 0.0 && energy <= 1.0) {
            return Err(Error::config(
                "data.image_pca_energy",
                format!("must be in (0, 1], got {energy}"),
            ));
        }
        let mean = column_means(data, n, dim);
        let c = centred_scatter(data, n, dim, &mean);
        let (active, sub) = active_block(&c, dim);
        let m = active.len();
        drop(c);
        let eig = SymEigen::new(sub, m)?;
        let (k, energy_kept) = components_for_energy(&eig.values, energy);
        let components = (0..k)
            .map(|r| {
                let v = eig.vector(r);
                let mut full = vec![0.0f32; dim];
                for (a, &i) in active.iter().enumerate() {
                    full[i] = v[a] as f32;
                }
                full
            })
            .collect();
        Ok(Pca {
            dim,
            mean: mean.iter().map(|&v| v as f32).collect(),
            components,
            energy_kept,
            eigenvalues: eig.values,
        })
    }

    /// Replace `x` by its reconstruction `μ + Σ_j ((x − μ)·v_j) v_j`.
    pub fn reconstruct(&self, x: &mut [f32]) {
        let centred: Vec<f32> = x.iter().zip(&self.mean).map(|(a, m)| a - m).collect();
        x.copy_from_slice(&self.mean);
        for comp in &self.components {
            let coef: f32 = centred.iter().zip(comp).map(|(a, b)| a * b).sum();
            for (xi, ci) in x.iter_mut().zip(comp) {
                *xi += coef * ci;
            }
        }
    }
}

/// Mean of each of the `dim` columns over the `n` rows.
fn column_means(data: &[f32], n: usize, dim: usize) -> Vec<f64> {
    let mut mean = vec![0.0f64; dim];
    for r in data.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(r) {
            *m += v as f64;
        }
    }
    for m in mean.iter_mut() {
        *m /= n as f64;
    }
    mean
}

/// The centred scatter matrix `C = XᵀX − n μμᵀ` (`dim × dim`), `XᵀX` accumulated over
/// non-zero entries only (images are mostly zero).
fn centred_scatter(data: &[f32], n: usize, dim: usize, mean: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0f64; dim * dim];
    let mut nz: Vec<(usize, f64)> = Vec::with_capacity(dim);
    for r in data.chunks_exact(dim) {
        nz.clear();
        nz.extend(
            r.iter()
                .enumerate()
                .filter(|(_, &v)| v != 0.0)
                .map(|(i, &v)| (i, v as f64)),
        );
        for (a, &(i, vi)) in nz.iter().enumerate() {
            let row = &mut c[i * dim..(i + 1) * dim];
            for &(j, vj) in &nz[a..] {
                row[j] += vi * vj;
            }
        }
    }
    for i in 0..dim {
        for j in i..dim {
            let v = c[i * dim + j] - n as f64 * mean[i] * mean[j];
            c[i * dim + j] = v;
            c[j * dim + i] = v;
        }
    }
    c
}

/// The dimensions with non-zero variance (constant pixels contribute nothing) and the
/// block of `c` they span.
fn active_block(c: &[f64], dim: usize) -> (Vec<usize>, Vec<f64>) {
    let active: Vec<usize> = (0..dim).filter(|&i| c[i * dim + i] > 1e-12).collect();
    let m = active.len();
    let mut sub = vec![0.0f64; m * m];
    for (a, &i) in active.iter().enumerate() {
        for (b, &j) in active.iter().enumerate() {
            sub[a * m + b] = c[i * dim + j];
        }
    }
    (active, sub)
}

/// The fewest leading components (of the descending `values`) holding at least `energy`
/// of the total variance, and the share they hold.
fn components_for_energy(values: &[f64], energy: f64) -> (usize, f64) {
    let m = values.len();
    let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
    let mut k = m.max(1);
    let mut acc = 0.0;
    if total > 0.0 {
        for (i, v) in values.iter().enumerate() {
            acc += v.max(0.0);
            if acc / total >= energy {
                k = i + 1;
                break;
            }
        }
    }
    let k = k.min(m);
    let energy_kept = if total > 0.0 {
        values[..k].iter().map(|v| v.max(0.0)).sum::<f64>() / total
    } else {
        1.0
    };
    (k, energy_kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn eigen_random_symmetric() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for &n in &[1usize, 2, 3, 7, 40] {
            let mut a = vec![0.0f64; n * n];
            for i in 0..n {
                for j in i..n {
                    let v: f64 = rng.random::<f64>() * 2.0 - 1.0;
                    a[i * n + j] = v;
                    a[j * n + i] = v;
                }
            }
            let eig = SymEigen::new(a.clone(), n).unwrap();
            let tr: f64 = (0..n).map(|i| a[i * n + i]).sum();
            assert!((eig.values.iter().sum::<f64>() - tr).abs() < 1e-9);
            for r in 0..n {
                let v = eig.vector(r);
                let norm: f64 = v.iter().map(|x| x * x).sum();
                assert!((norm - 1.0).abs() < 1e-9);
                for i in 0..n {
                    let av: f64 = (0..n).map(|j| a[i * n + j] * v[j]).sum();
                    assert!((av - eig.values[r] * v[i]).abs() < 1e-8, "n {n} rank {r}");
                }
            }
            for w in eig.values.windows(2) {
                assert!(w[0] >= w[1]);
            }
        }
    }
}
