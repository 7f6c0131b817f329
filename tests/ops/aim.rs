//! AIM kernels against CPU references: GPU selection of the lowest-ρ fraction with ties and
//! odd sizes, auxiliary-block scales, prototype scores vs f64.
use crate::common;
use common::*;
use equimodal::ops;
use equimodal::{Error, Tensor};

/// Unpack a selection mask through `mask_scale(s = 1)`, which is M itself as 0/1.
fn mask_values(mask: &Tensor, n: usize) -> Vec<f32> {
    ops::mask_scale(mask, &[n], 1.0).unwrap().to_vec().unwrap()
}

/// CPU reference: the k = round(ρn) smallest (value, index) pairs.
fn select_ref(v: &[f32], rho: f32) -> Vec<bool> {
    let n = v.len();
    let k = ops::selected_count(n, rho);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]).then(a.cmp(&b)));
    let mut out = vec![false; n];
    for &i in &idx[..k] {
        out[i] = true;
    }
    out
}

fn check_selection(name: &str, layers: &[Vec<f32>], rho: f32) {
    let gpu = gpu();
    let ts: Vec<Tensor> = layers.iter().map(|v| Tensor::from_slice(&gpu, v, &[v.len()]).unwrap()).collect();
    let refs: Vec<&Tensor> = ts.iter().collect();
    let sel = ops::select_lowest(&refs, rho).unwrap();
    let dens = sel.densities().unwrap();
    for (l, v) in layers.iter().enumerate() {
        let n = v.len();
        let got = mask_values(&sel.masks[l], n);
        let want = select_ref(v, rho);
        let k = ops::selected_count(n, rho);
        let ones = got.iter().filter(|&&x| x == 1.0).count();
        assert_eq!(ones, k, "{name} layer {l} (n {n}): {ones} selected, want {k}");
        for i in 0..n {
            assert_eq!(got[i] == 1.0, want[i], "{name} layer {l} (n {n}) element {i} (score {})", v[i]);
            assert!(got[i] == 0.0 || got[i] == 1.0);
        }
        assert!((dens[l] - k as f64 / n as f64).abs() < 1e-12, "{name}: density {} vs {}", dens[l], k as f64 / n as f64);
        if n >= 100 {
            assert!((dens[l] - rho as f64).abs() <= 0.5 / n as f64 + 1e-9, "{name}: density {} far from rho {rho}", dens[l]);
        }
    }
}

#[test]
fn selection_matches_cpu_on_random_scores_odd_sizes() {
    let mut rng = Rng::new(1);
    for &rho in &[0.5f32, 0.1, 0.9, 0.37] {
        let layers: Vec<Vec<f32>> = [1usize, 2, 31, 255, 257, 1000, 4097, 9001]
            .iter()
            .map(|&n| (0..n).map(|_| rng.uniform().powi(3) as f32 * 1e-3).collect())
            .collect();
        check_selection(&format!("random rho {rho}"), &layers, rho);
    }
}

#[test]
fn selection_handles_ties_and_duplicates() {
    let mut rng = Rng::new(2);
    // all equal, many zeros (never-updated elements), few distinct values, and a mix
    let n = 5000;
    let layers = vec![
        vec![0.25f32; n],
        vec![0.0f32; 777],
        (0..n).map(|_| (rng.below(4) as f32) * 0.5).collect::<Vec<_>>(),
        (0..3333).map(|i| if i % 3 == 0 { 0.0 } else { rng.uniform() as f32 }).collect::<Vec<_>>(),
        (0..1025).map(|i| if i < 600 { 1e-6 } else { 2e-6 }).collect::<Vec<_>>(),
        // negative values and -0.0 / +0.0 are ordered correctly too
        (0..300).map(|i| match i % 3 { 0 => -0.0, 1 => 0.0, _ => -(rng.uniform() as f32) }).collect::<Vec<_>>(),
    ];
    for &rho in &[0.5f32, 0.0, 1.0, 0.123] {
        check_selection(&format!("ties rho {rho}"), &layers, rho);
    }
}

#[test]
fn selection_of_a_larger_layer_is_exact() {
    let mut rng = Rng::new(3);
    // several histogram workgroups and three index digits
    let v: Vec<f32> = (0..70_001).map(|_| (rng.below(1000) as f32) * 1e-4).collect();
    check_selection("large", &[v], 0.5);
}

#[test]
fn mask_scale_values() {
    let gpu = gpu();
    let mut rng = Rng::new(4);
    let shape = [7usize, 5, 3, 3];
    let n = numel(&shape);
    let v: Vec<f32> = (0..n).map(|_| rng.uniform() as f32).collect();
    let t = Tensor::from_slice(&gpu, &v, &shape).unwrap();
    let sel = ops::select_lowest(&[&t], 0.3).unwrap();
    let m = select_ref(&v, 0.3);
    for &s in &[0.0f32, 0.25, 0.9, 1.0] {
        let sc = ops::mask_scale(&sel.masks[0], &shape, s).unwrap();
        assert_eq!(sc.shape(), &shape);
        let want: Vec<f64> = m.iter().map(|&b| 1.0 - s as f64 * (1.0 - if b { 1.0 } else { 0.0 })).collect();
        assert_close(&format!("mask_scale s={s}"), &sc.to_vec().unwrap(), &want, 0.0, 1e-7);
    }
    // typed errors
    let bad = ops::mask_scale(&sel.masks[0], &[n + 64], 0.5);
    assert!(matches!(bad, Err(Error::Shape { .. })), "wrong mask size must be a shape error");
    let f = Tensor::zeros(&gpu, &[4]).unwrap();
    assert!(matches!(ops::mask_scale(&f, &[100], 0.5), Err(Error::DType { .. })));
    assert!(ops::select_lowest(&[&t], 1.5).is_err());
}

fn proto_ref(h: &[f64], p: &[f64], labels: &[u32], n: usize, k: usize, t: f64) -> (Vec<f64>, Vec<f64>) {
    let dim = h.len() / n;
    let mut probs = Vec::new();
    let mut tcp = Vec::new();
    for i in 0..n {
        let logits: Vec<f64> = (0..k)
            .map(|c| {
                let d2: f64 = (0..dim).map(|j| (h[i * dim + j] - p[c * dim + j]).powi(2)).sum();
                -d2 / (t * dim as f64)
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = logits.iter().map(|l| (l - m).exp()).sum();
        let pr: Vec<f64> = logits.iter().map(|l| (l - m).exp() / s).collect();
        tcp.push(pr[labels[i] as usize]);
        probs.extend(pr);
    }
    (probs, tcp)
}

#[test]
fn prototype_scores_match_f64() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    for &(n, k, ref per, t) in &[(5usize, 3usize, vec![4usize, 3, 3], 1.0f32), (1, 2, vec![17], 0.5), (33, 10, vec![6, 5], 0.1), (3, 4, vec![8, 24, 24], 2.0), (2, 3, vec![5000], 1.0)] {
        let dim: usize = per.iter().product();
        let h = rng.normals(n * dim);
        let p: Vec<f64> = rng.normals(k * dim).iter().map(|v| v * 0.7).collect();
        let labels: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        let hs: Vec<usize> = [vec![n], per.clone()].concat();
        let ps: Vec<usize> = [vec![k], per.clone()].concat();
        let ht = upload(&gpu, &h, &hs);
        let pt = upload(&gpu, &p, &ps);
        let lt = ops::labels(&gpu, &labels, k).unwrap();
        let (probs, tcp) = proto_ref(&round_f32(&h), &round_f32(&p), &labels, n, k, t as f64);
        let got = ops::softmax(&ops::proto_logits(&ht, &pt, t).unwrap()).unwrap().to_vec().unwrap();
        // logits: dot products over `dim` features, then a softmax over k prototypes
        assert_close("proto softmax", &got, &probs, 1e-5, 1e-6);
        let got = ops::proto_scores(&ht, &pt, &lt, t).unwrap().to_vec().unwrap();
        assert_close("proto true-class prob", &got, &tcp, 1e-5, 1e-6);
    }
    let a = Tensor::zeros(&gpu, &[2, 3]).unwrap();
    let b = Tensor::zeros(&gpu, &[2, 4]).unwrap();
    assert!(matches!(ops::proto_logits(&a, &b, 1.0), Err(Error::Shape { .. })));
}

/// AIM's selection, mask and prototype kernels with few workgroups per grid dimension
/// (`with_workgroup_cap`): folded 3-D grids with spare workgroups; the pool canary must hold.
#[test]
fn aim_kernels_under_workgroup_cap() {
    with_workgroup_cap(5, || {
        selection_matches_cpu_on_random_scores_odd_sizes();
        selection_handles_ties_and_duplicates();
        mask_scale_values();
        prototype_scores_match_f64();
        assert_canaries("AIM selection / mask / prototypes");
    });
    // 70,001 scores: more than 5^3 workgroups of 256
    with_workgroup_cap(7, || {
        selection_of_a_larger_layer_is_exact();
        assert_canaries("AIM selection of 70,001 scores");
    });
}
