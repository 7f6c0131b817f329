//! Counter-based random numbers and dropout: bit-exact host reference, determinism,
//! moments within 5 standard errors, dropout mask reuse in the backward.
use crate::common;
use common::*;
use equimodal::ops;
use equimodal::Tensor;

fn moments(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
    (m, var)
}

#[test]
fn philox_known_answers() {
    // Random123 known-answer vectors for Philox-4x32-10
    assert_eq!(ops::philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    assert_eq!(ops::philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
    assert_eq!(
        ops::philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    );
}

#[test]
fn uniform_is_bit_exact_with_the_host_reference() {
    let g = gpu();
    let (seed, offset) = (0x1234_5678_9ABC_DEF0u64, (7u64 << 32) | 3);
    let n = 1003; // not a multiple of 4 or of the workgroup
    let got = ops::rand_uniform(&g, &[17, 59], seed, offset).unwrap().to_vec().unwrap();
    for (e, &v) in got.iter().enumerate().take(n) {
        let w = ops::philox4x32_10([(e / 4) as u32, 0, offset as u32, (offset >> 32) as u32], [seed as u32, (seed >> 32) as u32]);
        let want = (w[e % 4] >> 8) as f32 / (1u32 << 24) as f32;
        assert_eq!(v, want, "element {e}");
    }
}

/// The normals are Box–Muller of the same Philox words, in pairs (x, y) and (z, w) of each
/// block: u1 = (x >> 8 + 1) 2^-24 (never 0), u2 = (y >> 8) 2^-24, r cos(2π u2) then
/// r sin(2π u2). Checked against the host's f64 transform of the host's words, to the
/// GPU's transcendental accuracy (a swapped pair, a missing + 1 or cos twice are far off).
#[test]
fn normal_is_box_muller_of_the_host_words() {
    let g = gpu();
    let (seed, offset) = (0x0BAD_5EED_1234_5678u64, (5u64 << 32) | 9);
    let got = ops::randn(&g, &[17, 59], seed, offset).unwrap().to_vec().unwrap();
    for (e, &v) in got.iter().enumerate() {
        let w = ops::philox4x32_10([(e / 4) as u32, 0, offset as u32, (offset >> 32) as u32], [seed as u32, (seed >> 32) as u32]);
        let pair = if e % 4 < 2 { (w[0], w[1]) } else { (w[2], w[3]) };
        let u1 = ((pair.0 >> 8) as f64 + 1.0) / (1u64 << 24) as f64;
        let u2 = (pair.1 >> 8) as f64 / (1u64 << 24) as f64;
        let (r, t) = ((-2.0 * u1.ln()).sqrt(), 2.0 * std::f64::consts::PI * u2);
        let want = if e % 2 == 0 { r * t.cos() } else { r * t.sin() };
        // f32 log, sqrt, cos and sin of arguments up to 2π: a few 1e-6 of r (r <= 5.8)
        assert!((v as f64 - want).abs() <= 2e-5 * r.max(1.0), "element {e}: got {v}, want {want}");
    }
}

#[test]
fn same_seed_offset_same_numbers_different_offset_different() {
    let g = gpu();
    let a = ops::rand_uniform(&g, &[1000], 42, 5).unwrap().to_vec().unwrap();
    let b = ops::rand_uniform(&g, &[1000], 42, 5).unwrap().to_vec().unwrap();
    assert_eq!(a, b);
    // a prefix of a longer draw is the shorter draw (values depend on the index only)
    let long = ops::rand_uniform(&g, &[1500], 42, 5).unwrap().to_vec().unwrap();
    assert_eq!(&long[..1000], &a[..]);
    let c = ops::rand_uniform(&g, &[1000], 42, 6).unwrap().to_vec().unwrap();
    let d = ops::rand_uniform(&g, &[1000], 43, 5).unwrap().to_vec().unwrap();
    assert!(a.iter().zip(&c).filter(|(x, y)| x == y).count() < 5);
    assert!(a.iter().zip(&d).filter(|(x, y)| x == y).count() < 5);
    let na = ops::randn(&g, &[999], 1, 2).unwrap().to_vec().unwrap();
    let nb = ops::randn(&g, &[999], 1, 2).unwrap().to_vec().unwrap();
    let nc = ops::randn(&g, &[999], 1, 3).unwrap().to_vec().unwrap();
    assert_eq!(na, nb);
    assert!(na.iter().zip(&nc).filter(|(x, y)| x == y).count() < 5);
}

#[test]
fn uniform_moments() {
    let g = gpu();
    let n = 100_000;
    let v = ops::rand_uniform(&g, &[n], 7, 0).unwrap().to_vec().unwrap();
    assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
    let (m, var) = moments(&v);
    let nf = n as f64;
    // se(mean) = sqrt(1/12 / n); se(var) = sqrt((mu4 - sigma^4) / n), mu4 = 1/80
    let se_m = (1.0 / 12.0 / nf).sqrt();
    let se_v = ((1.0 / 80.0 - 1.0 / 144.0) / nf).sqrt();
    assert!((m - 0.5).abs() < 5.0 * se_m, "mean {m}");
    assert!((var - 1.0 / 12.0).abs() < 5.0 * se_v, "var {var}");
}

#[test]
fn normal_moments() {
    let g = gpu();
    let n = 100_001;
    let v = ops::randn(&g, &[n], 9, 1).unwrap().to_vec().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    let (m, var) = moments(&v);
    let nf = n as f64;
    // se(mean) = 1/sqrt(n); se(var) = sqrt(2/n)
    assert!(m.abs() < 5.0 / nf.sqrt(), "mean {m}");
    assert!((var - 1.0).abs() < 5.0 * (2.0 / nf).sqrt(), "var {var}");
}

#[test]
fn dropout_keeps_and_scales_and_backward_uses_the_same_mask() {
    let g = gpu();
    let n = 100_003;
    let p = 0.3f32;
    let x = Tensor::from_slice(&g, &vec![1.5f32; n], &[n]).unwrap().requires_grad();
    let y = ops::dropout(&x, p, 11, 4, true).unwrap();
    let yv = y.to_vec().unwrap();
    let scale = 1.5 / (1.0 - p);
    let kept = yv.iter().filter(|&&v| v != 0.0).count();
    assert!(yv.iter().all(|&v| v == 0.0 || (v - scale).abs() < 1e-6));
    // kept ~ Binomial(n, 1-p)
    let (nf, q) = (n as f64, 1.0 - p as f64);
    let se = (nf * q * (1.0 - q)).sqrt();
    assert!((kept as f64 - nf * q).abs() < 5.0 * se, "kept {kept} of {n}");
    // the mask is exactly uniform >= p for the same (seed, offset)
    let u = ops::rand_uniform(&g, &[n], 11, 4).unwrap().to_vec().unwrap();
    for (i, (&yi, &ui)) in yv.iter().zip(&u).enumerate() {
        assert_eq!(yi != 0.0, ui >= p, "element {i}");
    }
    // backward: dx = w * mask / (1 - p), with the same mask
    let mut rng = Rng::new(5);
    let w = to_f32(&rng.uniforms(n, -1.0, 1.0));
    let mut grads = equimodal::Gradients::new();
    y.backward_with(Tensor::from_slice(&g, &w, &[n]).unwrap(), &mut grads).unwrap();
    let dx = grads.get(&x).unwrap().to_vec().unwrap();
    for i in 0..n {
        let want = if yv[i] != 0.0 { w[i] / (1.0 - p) } else { 0.0 };
        assert!((dx[i] - want).abs() <= 1e-6 * want.abs().max(1.0), "dx[{i}] = {} want {want}", dx[i]);
    }
    // same seed, different offset: a different mask
    let y2 = ops::dropout(&x, p, 11, 5, true).unwrap().to_vec().unwrap();
    assert!(yv.iter().zip(&y2).filter(|(a, b)| (**a == 0.0) != (**b == 0.0)).count() > n / 10);
}

#[test]
fn dropout_eval_identity_and_edge_probabilities() {
    let g = gpu();
    let data: Vec<f32> = (0..37).map(|i| i as f32 - 18.0).collect();
    let x = Tensor::from_slice(&g, &data, &[37]).unwrap();
    assert_eq!(ops::dropout(&x, 0.5, 1, 1, false).unwrap().to_vec().unwrap(), data);
    assert_eq!(ops::dropout(&x, 0.0, 1, 1, true).unwrap().to_vec().unwrap(), data);
    assert!(ops::dropout(&x, 1.0, 1, 1, true).unwrap().to_vec().unwrap().iter().all(|&v| v == 0.0));
    let e = ops::dropout(&x, 1.5, 1, 1, true).unwrap_err().to_string();
    assert!(e.contains("dropout") && e.contains("1.5") && e.contains("[37]"), "{e}");
    assert!(ops::dropout(&x, -0.1, 1, 1, true).is_err());
}
