//! The two baselines of issue 14, PMR and MMPareto: each one's distinguishing computation
//! against a CPU f64 reference written out from the official code (PMR's prototypes,
//! distances, coefficients, loss and its gradient; MMPareto's combined gradient for
//! conflicting and agreeing gradients), end-to-end training on synthetic data, exact resume
//! through the CLI after a kill, three modalities, and config errors that name the field.
use crate::common;
use common::resume::{resume_through_the_cli_is_exact, resume_through_the_cli_is_exact_killed_after};
use common::recorder::Recorder;
use common::*;
use equimodal::config::{self, Config};
use equimodal::methods::{PmrCoefficient, PmrConfig};
use equimodal::data::{self, Loader, LoaderConfig, Split};
use equimodal::methods::{mmpareto, pmr, Method, Pmr};
use equimodal::optim::Optimizer;
use equimodal::train::{self, TrainOptions};
use equimodal::Tensor;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) fn sets(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn tiny(extra: &[&str]) -> Vec<String> {
    let mut v = sets(&["data.n_train=160", "data.n_test=64", "model.encoder=mlp", "model.hidden=[32]", "train.batch_size=32", "train.workers=1", "train.epochs=3"]);
    v.extend(sets(extra));
    v
}

pub(crate) fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equimodal-baselines-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub(crate) fn train_log(list: &[String], dir: &Path) -> Vec<serde_json::Value> {
    let (cfg, text) = config::load(None, list).unwrap();
    let mut o = TrainOptions::new(dir);
    o.progress = false;
    train::train(&gpu(), &cfg, &text, &o).unwrap();
    let lines = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let _ = std::fs::remove_dir_all(dir);
    lines
}

// ---------------------------------------------------------------------------------------
// PMR reference (f64), written out from main_Prototype_grad.py
// ---------------------------------------------------------------------------------------

/// EU_dist: d[n][k] = sqrt(Σ (z_n − c_k)²) (+ the 1e-12 guard of `pmr::DIST_EPS`).
fn ref_dist(z: &[f64], c: &[f64], n: usize, k: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * k];
    for i in 0..n {
        for j in 0..k {
            let s: f64 = (0..d).map(|e| (z[i * d + e] - c[j * d + e]).powi(2)).sum();
            out[i * k + j] = (s + pmr::DIST_EPS as f64).sqrt();
        }
    }
    out
}

fn softmax_row(r: &[f64]) -> Vec<f64> {
    let mx = r.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = r.iter().map(|v| (v - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// nn.CrossEntropyLoss (batch mean).
fn ref_ce(logits: &[f64], y: &[u32], k: usize) -> f64 {
    let n = y.len();
    (0..n).map(|i| -softmax_row(&logits[i * k..(i + 1) * k])[y[i] as usize].ln()).sum::<f64>() / n as f64
}

/// Σ_n softmax(logits_n)[y_n]
fn ref_score(logits: &[f64], y: &[u32], k: usize) -> f64 {
    (0..y.len()).map(|i| softmax_row(&logits[i * k..(i + 1) * k])[y[i] as usize]).sum()
}

/// (weight without α, dominant) from prototype scores: Code: 1 for every modality below the
/// best score; Ratio: clip(s_max/s_m − 1, 0, 1).
fn ref_weights(s: &[f64], kind: PmrCoefficient) -> (Vec<f64>, Vec<f64>) {
    let mx = s.iter().cloned().fold(f64::MIN, f64::max);
    let w = s
        .iter()
        .map(|&v| match kind {
            PmrCoefficient::Code => {
                if v < mx {
                    1.0
                } else {
                    0.0
                }
            }
            PmrCoefficient::Ratio => (mx / v - 1.0).clamp(0.0, 1.0),
        })
        .collect();
    (w, s.iter().map(|&v| if v >= mx { 1.0 } else { 0.0 }).collect())
}

struct RefTerms {
    loss: f64,
    pce: Vec<f64>,
    scores: Vec<f64>,
    coef: Vec<f64>,
    dist: Vec<Vec<f64>>,
}

/// PMR's loss; `fixed` = Some((weight, dominant)) holds the coefficients constant (they are
/// not differentiated, as in the official code where they are Python numbers).
#[allow(clippy::too_many_arguments)]
fn ref_pmr(fused: &[f64], feats: &[Vec<f64>], protos: &[Vec<f64>], y: &[u32], k: usize, dims: &[usize], cfg: &PmrConfig, entropy: bool, fixed: Option<&(Vec<f64>, Vec<f64>)>) -> RefTerms {
    let n = y.len();
    let mut loss = ref_ce(fused, y, k);
    let mut pce = Vec::new();
    let mut scores = Vec::new();
    let mut dist = Vec::new();
    let mut ents = Vec::new();
    for (m, (z, c)) in feats.iter().zip(protos).enumerate() {
        let d = ref_dist(z, c, n, k, dims[m]);
        let sim: Vec<f64> = d.iter().map(|v| -v).collect();
        pce.push(ref_ce(&sim, y, k));
        scores.push(ref_score(&sim, y, k));
        let h: f64 = (0..n)
            .map(|i| {
                let p = softmax_row(&sim[i * k..(i + 1) * k]);
                -p.iter().map(|q| q * q.ln()).sum::<f64>()
            })
            .sum();
        ents.push(h);
        dist.push(d);
    }
    let (w, dom) = match fixed {
        Some(f) => f.clone(),
        None => ref_weights(&scores, cfg.coefficient),
    };
    let coef: Vec<f64> = w.iter().map(|v| cfg.alpha as f64 * v).collect();
    for m in 0..feats.len() {
        loss += coef[m] * pce[m];
    }
    if entropy {
        let wsum: f64 = w.iter().sum();
        let hd: f64 = dom.iter().zip(&ents).map(|(a, b)| a * b).sum();
        loss -= cfg.mu as f64 * wsum * hd;
    }
    RefTerms { loss, pce, scores, coef, dist }
}

fn f64s_of(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().into_iter().map(|v| v as f64).collect()
}

/// (fused logits, features, prototypes, labels, classes, feature widths)
type PmrInputs = (Vec<f64>, Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<u32>, usize, Vec<usize>);

/// Random fused logits, features and prototypes for M = 2 modalities of widths 5 and 3.
fn pmr_inputs(seed: u64, scale: [f64; 2]) -> PmrInputs {
    let mut r = Rng::new(seed);
    let (n, k) = (6, 3);
    let dims = vec![5, 3];
    let y: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
    let fused = r.normals(n * k);
    let mut feats = Vec::new();
    let mut protos = Vec::new();
    for (m, &d) in dims.iter().enumerate() {
        let c: Vec<f64> = r.normals(k * d).into_iter().map(|v| 1.5 * v).collect();
        // features near their class prototype, closer for the modality with the smaller scale
        let z: Vec<f64> = (0..n * d).map(|i| c[(y[i / d] as usize) * d + i % d] + scale[m] * r.normal()).collect();
        feats.push(z);
        protos.push(c);
    }
    (fused, feats, protos, y, k, dims)
}

#[test]
fn pmr_distances_coefficients_loss_and_gradient_match_the_f64_reference() {
    let g = gpu();
    for (kind, mu, entropy) in [(PmrCoefficient::Code, 0.0, false), (PmrCoefficient::Ratio, 0.0, false), (PmrCoefficient::Code, 0.3, true), (PmrCoefficient::Ratio, 0.05, true)] {
        // modality 0 clusters loosely (the slow one), modality 1 tightly
        let (fused, feats, protos, y, k, dims) = pmr_inputs(7, [1.2, 0.3]);
        let cfg = PmrConfig { alpha: 0.7, coefficient: kind, mu, entropy_epochs: 1, ..Default::default() };
        let what = format!("{kind:?} mu={mu}");
        let n = y.len();
        let ft = upload(&g, &fused, &[n, k]);
        let zt: Vec<Tensor> = feats.iter().zip(&dims).map(|(z, &d)| upload(&g, z, &[n, d]).requires_grad()).collect();
        let pt: Vec<Tensor> = protos.iter().zip(&dims).map(|(c, &d)| upload(&g, c, &[k, d])).collect();
        let labels = Tensor::from_u32(&g, &y, &[n]).unwrap();
        let want = ref_pmr(&fused, &feats, &protos, &y, k, &dims, &cfg, entropy, None);
        assert!(want.scores[0] < want.scores[1], "the data must make modality 0 the slow one: {:?}", want.scores);
        for m in 0..2 {
            let d = pmr::distances(&zt[m], &pt[m]).unwrap();
            assert_close(&format!("{what}: distances {m}"), &d.to_vec().unwrap(), &want.dist[m], 1e-5, 1e-5);
        }
        let t = pmr::pmr_terms(&ft, &zt, &pt, &labels, &cfg, true, entropy).unwrap();
        assert_close(&format!("{what}: scores"), &t.scores.to_vec().unwrap(), &want.scores, 1e-5, 1e-6);
        assert_close(&format!("{what}: proto CE"), &t.proto_ce.to_vec().unwrap(), &want.pce, 1e-5, 1e-6);
        assert_close(&format!("{what}: coefficients"), &t.coef.to_vec().unwrap(), &want.coef, 1e-5, 1e-6);
        assert_close(&format!("{what}: loss"), &t.loss.to_vec().unwrap(), &[want.loss], 1e-5, 1e-6);
        match kind {
            // the slow modality gets α, the dominant none
            PmrCoefficient::Code => assert_eq!(ref_weights(&want.scores, kind).0, vec![1.0, 0.0]),
            PmrCoefficient::Ratio => assert!(want.coef[0] > 0.0 && want.coef[0] < 0.69 && want.coef[1] == 0.0, "{:?}", want.coef),
        }
        // gradient of the loss in the features: central differences of the reference with the
        // step's coefficients held fixed
        let grads = t.loss.backward().unwrap();
        let fixed = ref_weights(&want.scores, kind);
        for m in 0..2 {
            let got = grads.get(&zt[m]).expect("the features get a gradient").to_vec().unwrap();
            let mut num = vec![0.0; feats[m].len()];
            for (i, slot) in num.iter_mut().enumerate() {
                let h = 1e-5;
                let mut fp = feats.clone();
                fp[m][i] += h;
                let lp = ref_pmr(&fused, &fp, &protos, &y, k, &dims, &cfg, entropy, Some(&fixed)).loss;
                fp[m][i] -= 2.0 * h;
                let lm = ref_pmr(&fused, &fp, &protos, &y, k, &dims, &cfg, entropy, Some(&fixed)).loss;
                *slot = (lp - lm) / (2.0 * h);
            }
            assert_close(&format!("{what}: d loss / d features {m}"), &got, &num, 1e-3, 1e-5);
        }
        // outside the active epochs the loss is the fused CE alone
        let off = pmr::pmr_terms(&ft, &zt, &pt, &labels, &cfg, false, false).unwrap();
        assert_close(&format!("{what}: inactive loss"), &off.loss.to_vec().unwrap(), &[ref_ce(&fused, &y, k)], 1e-5, 1e-6);
    }
}

#[test]
fn pmr_coefficients_for_three_modalities_and_ties() {
    let g = gpu();
    let s = upload(&g, &[3.0, 6.0, 4.0], &[3]);
    let (c, w, d) = pmr::coefficients(&s, 2.0, PmrCoefficient::Code).unwrap();
    assert_eq!(c.to_vec().unwrap(), vec![2.0, 0.0, 2.0]);
    assert_eq!(w.to_vec().unwrap(), vec![1.0, 0.0, 1.0]);
    assert_eq!(d.to_vec().unwrap(), vec![0.0, 1.0, 0.0]);
    let (c, _, _) = pmr::coefficients(&s, 2.0, PmrCoefficient::Ratio).unwrap();
    // clip(6/3 − 1, 0, 1) = 1, 0, clip(6/4 − 1) = 0.5
    assert_close("ratio coefficients", &c.to_vec().unwrap(), &[2.0, 0.0, 1.0], 1e-6, 1e-6);
    // equal scores: nobody is slow (the official `else: beta = lam = 0`)
    let s = upload(&g, &[5.0, 5.0], &[2]);
    let (c, _, _) = pmr::coefficients(&s, 1.0, PmrCoefficient::Code).unwrap();
    assert_eq!(c.to_vec().unwrap(), vec![0.0, 0.0]);
}

#[test]
fn pmr_prototypes_are_class_means_with_the_official_momentum_schedule() {
    let g = gpu();
    // update_prototypes: class means; an absent class keeps its previous prototype
    let sums = upload(&g, &[2.0, 4.0, 0.0, 0.0, 9.0, 3.0], &[3, 2]);
    let counts = upload(&g, &[2.0, 0.0, 3.0], &[3]);
    let prev = upload(&g, &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0], &[3, 2]);
    let p = pmr::update_prototypes(&sums, &counts, &prev, 0.2, false).unwrap();
    assert_close("means", &p.to_vec().unwrap(), &[1.0, 2.0, 30.0, 40.0, 3.0, 1.0], 1e-6, 1e-6);
    let p = pmr::update_prototypes(&sums, &counts, &prev, 0.2, true).unwrap();
    let want: Vec<f64> = [1.0, 2.0, 30.0, 40.0, 3.0, 1.0].iter().zip([10.0, 20.0, 30.0, 40.0, 50.0, 60.0]).map(|(a, b)| 0.8 * a + 0.2 * b).collect();
    assert_close("momentum", &p.to_vec().unwrap(), &want, 1e-6, 1e-6);

    // through the method: eval-mode features of the observed batches, averaged per class;
    // the official code skips the momentum for the computations before epochs 0 and 1
    let c: Config = config::load(None, &tiny(&["method.name=pmr", "model.encoder=small_cnn", "model.width=4", "model.depth=2"])).unwrap().0;
    let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
    let classes = ds.num_classes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut m = Pmr::new(&g, &c.method_setup(), ds.modalities(), classes, &mut rng).unwrap();
    let mut lc = LoaderConfig::eval(40);
    lc.workers = 1;
    let batches: Vec<_> = Loader::new(ds.clone(), Split::Train, lc).unwrap().take(2).map(|b| b.unwrap()).collect();
    let dbs: Vec<_> = batches.iter().map(|b| train::upload_batch(&g, b, classes).unwrap()).collect();
    let means = |bi: usize| -> Vec<Vec<f64>> {
        let feats = m.features(&dbs[bi].inputs).unwrap();
        feats
            .iter()
            .map(|f| {
                let d = f.dim(1);
                let v = f64s_of(f);
                let mut s = vec![0.0; classes * d];
                let mut cnt = vec![0.0; classes];
                for (i, &y) in batches[bi].labels.iter().enumerate() {
                    cnt[y as usize] += 1.0;
                    for e in 0..d {
                        s[y as usize * d + e] += v[i * d + e];
                    }
                }
                (0..classes * d).map(|i| s[i] / cnt[i / d]).collect()
            })
            .collect()
    };
    let (ma, mb) = (means(0), means(1));
    let protos = |m: &Pmr| -> Vec<Vec<f32>> { m.prototypes().iter().map(|p| p.to_vec().unwrap()).collect() };
    // epoch 0: batch A → mean(A)
    m.observe(&dbs[0], 0).unwrap();
    m.end_observe(0).unwrap();
    for (i, p) in protos(&m).iter().enumerate() {
        assert_close(&format!("epoch 0 prototypes {i}"), p, &ma[i], 1e-4, 1e-5);
    }
    // epoch 1: batch B → mean(B), no momentum yet
    m.observe(&dbs[1], 1).unwrap();
    m.end_observe(1).unwrap();
    for (i, p) in protos(&m).iter().enumerate() {
        assert_close(&format!("epoch 1 prototypes {i}"), p, &mb[i], 1e-4, 1e-5);
    }
    // epoch 2: batch A → 0.8·mean(A) + 0.2·mean(B)
    m.observe(&dbs[0], 2).unwrap();
    m.end_observe(2).unwrap();
    for (i, p) in protos(&m).iter().enumerate() {
        let want: Vec<f64> = ma[i].iter().zip(&mb[i]).map(|(a, b)| 0.8 * a + 0.2 * b).collect();
        assert_close(&format!("epoch 2 prototypes {i}"), p, &want, 1e-4, 1e-5);
    }
    // the prototypes are checkpointed state
    let names: Vec<String> = m.buffers().into_iter().map(|b| b.0).collect();
    assert!(names.contains(&"pmr.proto.audio".to_string()) && names.contains(&"pmr.proto.visual".to_string()), "{names:?}");
}

// ---------------------------------------------------------------------------------------
// MMPareto reference (f64), written out from MMPareto.py and min_norm_solvers.py
// ---------------------------------------------------------------------------------------

/// Returns (combined gradients per tensor, cos, k, conflict).
fn ref_pareto(gm: &[Vec<f64>], gu: &[Vec<f64>], gamma: f64) -> (Vec<Vec<f64>>, f64, f64, bool) {
    let dot = |a: &[Vec<f64>], b: &[Vec<f64>]| -> f64 { a.iter().zip(b).map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>()).sum() };
    let (v11, v12, v22) = (dot(gm, gm), dot(gm, gu), dot(gu, gu));
    let cos = v12 / (v11.sqrt() * v22.sqrt()).max(1e-8);
    // the official `if cos > 0: ½, ½ else: min-norm`
    let conflict = cos <= 0.0 || cos.is_nan();
    let k = if !conflict {
        0.5
    } else if v12 >= v11 {
        0.999
    } else if v12 >= v22 {
        0.001
    } else {
        -((v12 - v22) / (v11 + v22 - 2.0 * v12))
    };
    let out = gm
        .iter()
        .zip(gu)
        .map(|(a, b)| {
            let new: Vec<f64> = a.iter().zip(b).map(|(p, q)| 2.0 * k * p + 2.0 * (1.0 - k) * q).collect();
            let three: f64 = a.iter().zip(b).map(|(p, q)| (p + q).powi(2)).sum::<f64>().sqrt();
            let nn: f64 = new.iter().map(|v| v * v).sum::<f64>().sqrt();
            let diff = three / nn;
            let s = if diff > 1.0 { diff * gamma } else { gamma };
            new.iter().map(|v| v * s).collect()
        })
        .collect();
    (out, cos, k, conflict)
}

#[test]
fn mmpareto_combines_conflicting_and_agreeing_gradients_like_the_official_code() {
    let g = gpu();
    let shapes: [&[usize]; 3] = [&[4, 3], &[3], &[2, 2, 2]];
    let mut r = Rng::new(11);
    let gm: Vec<Vec<f64>> = shapes.iter().map(|s| r.normals(numel(s))).collect();
    let noise: Vec<Vec<f64>> = shapes.iter().map(|s| r.normals(numel(s))).collect();
    // conflicting: g_uni ≈ −0.4·g_mm; agreeing: g_uni ≈ +0.6·g_mm; a conflicting pair whose
    // min-norm weight lands far from ½; and a zero unimodal gradient (cos = 0: the min-norm
    // edge case v1v2 >= v2v2, k = 0.001)
    let mix = |a: f64, b: f64| -> Vec<Vec<f64>> { gm.iter().zip(&noise).map(|(x, n)| x.iter().zip(n).map(|(p, q)| a * p + b * q).collect()).collect() };
    // mixed: the group conflicts (‖g_uni‖ > ‖g_mm‖, so k > ½) while tensor 1 agrees with
    // g_mm,1 = 3·g_uni,1: there ‖new‖ > ‖g_mm + g_uni‖ and the official `diff > 1` is false,
    // the only way the rescale's floor of 1 shows (over a whole group the min-norm
    // combination is never longer than the sum)
    let mixed: Vec<Vec<f64>> = gm.iter().enumerate().map(|(t, x)| x.iter().map(|v| v * [-2.0, 1.0 / 3.0, -1.0][t]).collect()).collect();
    let cases = [("conflict", mix(-0.4, 0.3)), ("agree", mix(0.6, 0.3)), ("conflict-lopsided", mix(-3.0, 0.5)), ("zero-unimodal", mix(0.0, 0.0)), ("mixed", mixed)];
    for (what, gu) in cases {
        for gamma in [1.5f32, 1.0] {
            let (want, cos, k, conflict) = ref_pareto(&gm, &gu, gamma as f64);
            let tm: Vec<Tensor> = gm.iter().zip(shapes).map(|(v, s)| upload(&g, v, s)).collect();
            let tu: Vec<Tensor> = gu.iter().zip(shapes).map(|(v, s)| upload(&g, v, s)).collect();
            let c = mmpareto::combine(&tm, &tu, gamma).unwrap();
            for (i, (got, w)) in c.grads.iter().zip(&want).enumerate() {
                assert_eq!(got.shape(), shapes[i]);
                assert_close(&format!("{what} γ={gamma}: tensor {i}"), &got.to_vec().unwrap(), w, 1e-5, 1e-6);
            }
            let info = c.info.to_vec().unwrap();
            assert_close(&format!("{what}: cos, k, conflict"), &info, &[cos, k, if conflict { 1.0 } else { 0.0 }], 1e-5, 1e-6);
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let new1: Vec<f64> = gm[1].iter().zip(&gu[1]).map(|(a, b)| 2.0 * k * a + 2.0 * (1.0 - k) * b).collect();
            let sum1: Vec<f64> = gm[1].iter().zip(&gu[1]).map(|(a, b)| a + b).collect();
            assert_eq!(norm(&new1) > norm(&sum1) * 1.01, what == "mixed", "{what}: only the mixed case keeps a tensor unstretched");
            match what {
                "agree" => assert!(!conflict && k == 0.5, "{what}: {cos} {k}"),
                "zero-unimodal" => assert!(conflict && k == 0.001, "{what}: {cos} {k}"),
                _ => assert!(conflict && k > 0.0 && k < 1.0 && k != 0.5, "{what}: {cos} {k}"),
            }
        }
    }
    // with agreeing gradients the result is γ·(g_mm + g_uni) exactly (the rescale is 1)
    let gu = mix(0.6, 0.3);
    let tm: Vec<Tensor> = gm.iter().zip(shapes).map(|(v, s)| upload(&g, v, s)).collect();
    let tu: Vec<Tensor> = gu.iter().zip(shapes).map(|(v, s)| upload(&g, v, s)).collect();
    let c = mmpareto::combine(&tm, &tu, 1.5).unwrap();
    let want: Vec<f64> = gm[0].iter().zip(&gu[0]).map(|(a, b)| 1.5 * (a + b)).collect();
    assert_close("agree = γ·sum", &c.grads[0].to_vec().unwrap(), &want, 1e-5, 1e-6);
}


#[test]
fn mmpareto_step_hands_every_parameter_a_gradient_and_scales_the_encoders() {
    // a step gives each encoder γ·(combined) and each head its plain gradient: with γ doubled
    // the encoder gradients double and the heads' stay (the batch-norm encoder also checks that
    // the second, statistics-preserving forward sees the same features)
    let run = |gamma: &str| {
        let c: Config = config::load(None, &tiny(&["method.name=mmpareto", "model.encoder=small_cnn", "model.width=4", "model.depth=2", gamma])).unwrap().0;
        let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut m = equimodal::methods::build(&gpu(), &c.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).unwrap();
        let mut lc = LoaderConfig::eval(32);
        lc.workers = 1;
        let hb = Loader::new(ds.clone(), Split::Train, lc).unwrap().next().unwrap().unwrap();
        let db = train::upload_batch(&gpu(), &hb, ds.num_classes()).unwrap();
        let mut rec = Recorder::default();
        rec.add_params(&m.trainable());
        let n_params = m.trainable().len();
        m.train_step(&db, &mut rec, 0).unwrap();
        let step = rec.steps.pop().unwrap();
        assert_eq!(step.len(), n_params, "every parameter gets a gradient");
        step
    };
    let a = run("method.mmpareto.gamma=1.5");
    let b = run("method.mmpareto.gamma=3.0");
    let mut heads = 0;
    for ((na, ga), (_, gb)) in a.iter().zip(&b) {
        let want: Vec<f64> = ga.iter().map(|&v| if na.starts_with("enc.") { 2.0 * v as f64 } else { v as f64 }).collect();
        assert_close(na, gb, &want, 1e-4, 1e-7);
        if na.starts_with("uni_head.") {
            heads += 1;
        }
    }
    assert_eq!(heads, 4, "a weight and a bias per unimodal head");
}

// ---------------------------------------------------------------------------------------
// end to end
// ---------------------------------------------------------------------------------------

#[test]
fn pmr_and_mmpareto_train_on_synthetic_data() {
    // default synthetic data: audio weak (signal 0.06), visual strong; 10 classes (chance 0.1)
    for name in ["pmr", "mmpareto"] {
        let lines = train_log(&tiny(&[&format!("method.name={name}"), "train.epochs=4", "data.n_train=480", "data.n_test=200"]), &tmp(&format!("e2e-{name}")));
        assert_eq!(lines.len(), 4);
        let last = lines.last().unwrap();
        let acc = last["test"]["acc"].as_f64().unwrap();
        assert!(acc > 0.5, "{name}: test accuracy {acc}: {last}");
        let losses: Vec<f64> = lines.iter().map(|l| l["train"]["loss"].as_f64().unwrap()).collect();
        assert!(losses.last().unwrap() < &losses[0], "{name}: the loss must fall: {losses:?}");
        for m in ["audio", "visual"] {
            assert!(last["test"]["per_modality"][m]["acc"].as_f64().is_some(), "{name}: {m} view: {last}");
        }
        if name == "pmr" {
            // the weak modality (audio) is the one its prototypical CE is switched on for
            let first = &lines[0]["pmr"];
            let (a, v) = (first["coef"]["audio"].as_f64().unwrap(), first["coef"]["visual"].as_f64().unwrap());
            assert!(a > 0.5 && a > v, "audio coef {a}, visual {v}: {first}");
            assert!(first["proto_score"]["audio"].as_f64().unwrap() < first["proto_score"]["visual"].as_f64().unwrap(), "{first}");
        } else {
            for l in &lines {
                for m in ["audio", "visual"] {
                    let k = l["mmpareto"]["k_multimodal"][m].as_f64().unwrap();
                    let share = l["mmpareto"]["conflict_share"][m].as_f64().unwrap();
                    assert!(k > 0.0 && k < 1.0 && (0.0..=1.0).contains(&share), "{l}");
                }
            }
        }
    }
}

#[test]
fn pmr_and_mmpareto_handle_three_modalities() {
    // PMR: every modality scored below the best gets the prototypical CE; MMPareto: one
    // parameter group per encoder
    let three = "data.modalities=[{name=\"a\",shape=[1,8,8],signal=0.1},{name=\"b\",shape=[1,8,8],signal=0.6},{name=\"c\",shape=[1,8,8],signal=0.3}]";
    for name in ["pmr", "mmpareto"] {
        let lines = train_log(&tiny(&[&format!("method.name={name}"), three, "train.epochs=2"]), &tmp(&format!("three-{name}")));
        let last = lines.last().unwrap();
        for m in ["a", "b", "c"] {
            assert!(last["test"]["per_modality"][m]["acc"].as_f64().is_some(), "{name}: {last}");
        }
        assert!(last["train"]["loss"].as_f64().unwrap().is_finite());
        if name == "pmr" {
            let s = &lines[0]["pmr"]["proto_score"];
            let c = &lines[0]["pmr"]["coef"];
            assert_eq!(c.as_object().unwrap().len(), 3, "{c}");
            // b is the strongest: it gets the smallest coefficient
            let cb = c["b"].as_f64().unwrap();
            assert!(cb < c["a"].as_f64().unwrap(), "{s} {c}");
        } else {
            assert_eq!(last["mmpareto"]["k_multimodal"].as_object().unwrap().len(), 3);
        }
    }
}

#[test]
fn resume_after_a_kill_pmr_cnn() {
    // prototypes are checkpointed state: the momentum (from epoch 2 on) mixes in the previous
    // epoch's, so the run is killed only after its third epoch is logged (checkpoint >= 2)
    let sets = tiny(&[
        "method.name=pmr",
        "method.pmr.coefficient=ratio",
        "method.pmr.mu=0.01",
        "method.pmr.entropy_epochs=2",
        "model.encoder=small_cnn",
        "model.width=4",
        "model.depth=2",
        "train.epochs=7",
        "data.n_train=480",
    ]);
    resume_through_the_cli_is_exact_killed_after("pmr", &sets, 7, 3);
}

#[test]
fn resume_after_a_kill_mmpareto_cnn_adam() {
    let sets = tiny(&[
        "method.name=mmpareto",
        "model.encoder=small_cnn",
        "model.width=4",
        "model.depth=2",
        "train.optimizer=adam",
        "train.lr=0.003",
        "train.epochs=5",
        "data.n_train=480",
    ]);
    resume_through_the_cli_is_exact("mmpareto", &sets, 5);
}

#[test]
fn baseline_config_errors_name_the_field() {
    let err = |s: &[&str]| config::load(None, &sets(s)).unwrap_err().to_string();
    for (set, field) in [
        ("method.pmr.momentum=1.5", "method.pmr.momentum"),
        ("method.pmr.alpha=-1", "method.pmr.alpha"),
        ("method.pmr.proto_fraction=0", "method.pmr.proto_fraction"),
        ("method.pmr.mu=-0.1", "method.pmr.mu"),
        ("method.mmpareto.gamma=0", "method.mmpareto.gamma"),
    ] {
        let e = err(&["method.name=pmr", set]);
        assert!(e.contains(field), "{set}: {e}");
    }
    let e = err(&["method.pmr.start_epoch=5", "method.pmr.end_epoch=2"]);
    assert!(e.contains("method.pmr.start_epoch"), "{e}");
    let e = err(&["method.pmr.bogus=1"]);
    assert!(e.contains("bogus"), "{e}");
    let e = err(&["method.mmpareto.bogus=1"]);
    assert!(e.contains("bogus"), "{e}");
    let e = err(&["method.pmr.coefficient=paper"]);
    assert!(e.contains("code") && e.contains("ratio"), "{e}");
    // the defaults are the official code's
    let c = config::load(None, &sets(&["method.name=pmr"])).unwrap().0;
    let p = &c.method.pmr;
    assert_eq!((p.alpha, p.momentum, p.proto_fraction, p.start_epoch, p.end_epoch, p.coefficient, p.mu), (1.0, 0.2, 0.1, 0, 100, PmrCoefficient::Code, 0.0));
    assert_eq!(c.method.mmpareto.gamma, 1.5);
}
