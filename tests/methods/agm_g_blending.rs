//! Two more baselines of issue 14, AGM and G-Blending: each one's distinguishing computation
//! against exact expected values or a CPU f64 reference written out from the official code
//! (AGM's Shapley outputs, scores, running mean, coefficients and a step's gradients through
//! the official backward hooks; G-Blending's weights from the losses and its blended step),
//! end-to-end training on synthetic data, three modalities, exact resume through the CLI
//! after a kill, and config errors that name the field.
use super::baselines::{f64s_of as f64s, sets, tiny, tmp, train_log};
use crate::common;
use common::recorder::Recorder;
use common::resume::resume_through_the_cli_is_exact;
use common::*;
use equimodal::config::{self, Config};
use equimodal::data::{self, Loader, LoaderConfig, Split};
use equimodal::methods::{agm, g_blending, DeviceBatch, Method};
use equimodal::optim::Optimizer;
use equimodal::train::{self, TrainOptions};
use equimodal::Tensor;
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// AGM reference (f64), written out from run/CREMAD_main.py and model/CREMAD_net.py
// ---------------------------------------------------------------------------------------

fn fact(n: usize) -> f64 {
    (1..=n).map(|x| x as f64).product()
}

/// φ_p = Σ_{S ⊆ others} |S|!(M−|S|−1)!/M! · (v(S ∪ p) − v(S)), v(∅) = 0 (for two modalities
/// the official ½(total − pad_audio + pad_visual)).
fn ref_shapley(values: &[Vec<f64>], m: usize) -> Vec<Vec<f64>> {
    let len = values[1].len();
    (0..m)
        .map(|p| {
            let mut out = vec![0.0; len];
            for s in (0..1usize << m).filter(|s| s >> p & 1 == 0) {
                let size = s.count_ones() as usize;
                let w = fact(size) * fact(m - size - 1) / fact(m);
                for (j, o) in out.iter_mut().enumerate() {
                    let without = if s == 0 { 0.0 } else { values[s][j] };
                    *o += w * (values[s | 1 << p][j] - without);
                }
            }
            out
        })
        .collect()
}

/// mean_n −log(p_n) with p < 1e-8 replaced by 1e-8 (the official per-sample loop).
fn ref_score(logits: &[f64], y: &[u32], k: usize) -> f64 {
    let n = y.len();
    let mut s = 0.0;
    for (i, &c) in y.iter().enumerate() {
        let r = &logits[i * k..(i + 1) * k];
        let mx = r.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = r.iter().map(|v| (v - mx).exp()).sum();
        let p = (r[c as usize] - mx).exp() / z;
        s += -(p.max(1e-8)).ln();
    }
    s / n as f64
}

/// (k, new running mean): r_m = exp(M/(M−1)(s̄ − s_m)), η_m likewise from T,
/// k_m = exp(α·min(η_m − r_m, cap)), T ← T(i−1)/i + s/i.
fn ref_coefficients(s: &[f64], t: &[f64], alpha: f64, cap: f64, i: f64) -> (Vec<f64>, Vec<f64>) {
    let m = s.len() as f64;
    let c = m / (m - 1.0);
    let rel = |x: &[f64]| {
        let mean = x.iter().sum::<f64>() / m;
        x.iter().map(|v| (c * (mean - v)).exp()).collect::<Vec<_>>()
    };
    let (r, eta) = (rel(s), rel(t));
    let k = r.iter().zip(&eta).map(|(r, e)| (alpha * (e - r).min(cap)).exp()).collect();
    let new_t = s.iter().zip(t).map(|(s, t)| t * (i - 1.0) / i + s / i).collect();
    (k, new_t)
}

#[test]
fn agm_shapley_outputs_scores_and_coefficients_match_the_f64_reference() {
    let g = gpu();
    let (n, k) = (7, 5);
    for m in [2usize, 3] {
        let mut rng = Rng::new(40 + m as u64);
        let values: Vec<Vec<f64>> = (0..1usize << m).map(|_| rng.normals(n * k).iter().map(|v| 3.0 * v).collect()).collect();
        // one sample whose true class is all but impossible in every view: the 1e-8 floor
        let mut y: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        y[0] = 0;
        let values: Vec<Vec<f64>> = values.into_iter().map(|mut v| {
            v[0] = -60.0;
            v
        }).collect();
        let dev: Vec<Tensor> = values.iter().map(|v| upload(&g, v, &[n, k])).collect();
        let labels = equimodal::ops::labels(&g, &y, k).unwrap();
        let phi = agm::shapley_outputs(&dev, m).unwrap();
        let want_phi = ref_shapley(&values, m);
        for (p, w) in phi.iter().zip(&want_phi) {
            assert_close(&format!("phi m={m}"), &p.to_vec().unwrap(), w, 1e-5, 1e-5);
        }
        let s = agm::scores(&phi, &labels).unwrap();
        let want_s: Vec<f64> = want_phi.iter().map(|p| ref_score(p, &y, k)).collect();
        assert_close(&format!("scores m={m}"), &s.to_vec().unwrap(), &want_s, 1e-5, 1e-5);
        let t: Vec<f64> = rng.uniforms(m, 0.5, 2.5);
        let kk = agm::coefficients(&s, &upload(&g, &t, &[m]), 0.7, 10.0).unwrap();
        let (want_k, _) = ref_coefficients(&f64s(&s), &t, 0.7, 10.0, 3.0);
        assert_close(&format!("coefficients m={m}"), &kk.to_vec().unwrap(), &want_k, 1e-5, 1e-7);
    }
    // two modalities in the official's own form: k_a = exp(α·min(e^{T_v − T_a} − e^{s_v − s_a}, cap))
    let coef = |s: &[f64], t: &[f64], alpha: f32, cap: f32| agm::coefficients(&upload(&g, s, &[2]), &upload(&g, t, &[2]), alpha, cap).unwrap().to_vec().unwrap();
    let e = std::f64::consts::E;
    assert_close("s = [1, 2], T = 0", &coef(&[1.0, 2.0], &[0.0, 0.0], 1.0, 10.0), &[(1.0 - e).exp(), (1.0 - 1.0 / e).exp()], 1e-5, 1e-7);
    // η_v − r_v = e^5 − 1 ≈ 147 is capped at 10; η_a − r_a = e^{-5} − 1
    assert_close("cap", &coef(&[0.0, 0.0], &[5.0, 0.0], 0.5, 10.0), &[(0.5 * ((-5.0f64).exp() - 1.0)).exp(), (0.5 * 10.0f64).exp()], 1e-5, 1e-7);
    // α = 0 turns the modulation into the identity
    assert_close("alpha 0", &coef(&[0.3, 4.0], &[1.0, 0.2], 0.0, 10.0), &[1.0, 1.0], 0.0, 0.0);
    // Shapley weights: 1/2, 1/2 for two; 1/3, 1/6, 1/3 for three (the official Modality_Audio)
    assert_eq!((agm::shapley_weight(0, 2), agm::shapley_weight(1, 2)), (0.5, 0.5));
    let w3 = [agm::shapley_weight(0, 3), agm::shapley_weight(1, 3), agm::shapley_weight(2, 3)];
    assert!((w3[0] - 1.0 / 3.0).abs() < 1e-15 && (w3[1] - 1.0 / 6.0).abs() < 1e-15 && (w3[2] - 1.0 / 3.0).abs() < 1e-15, "{w3:?}");
}

/// A method built from `extra` (same seed: the same initial parameters for every method
/// built on the same model), and the first training batch.
/// The method `tiny(extra)` builds with seed 0, its first training batch of 32, the config.
pub(crate) fn method_and_batch(extra: &[&str]) -> (Box<dyn Method>, DeviceBatch, Config) {
    let c: Config = config::load(None, &tiny(extra)).unwrap().0;
    let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let m = equimodal::methods::build(&gpu(), &c.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).unwrap();
    let mut lc = LoaderConfig::eval(32);
    lc.workers = 1;
    let hb = Loader::new(ds.clone(), Split::Train, lc).unwrap().next().unwrap().unwrap();
    let db = train::upload_batch(&gpu(), &hb, ds.num_classes()).unwrap();
    (m, db, c)
}

/// The f64 scores of a batch from the model's own logits of every input subset (MLP
/// encoders: training and eval forwards agree).
fn ref_batch_scores(m: &dyn Method, db: &DeviceBatch, labels: &[u32]) -> Vec<f64> {
    let g = gpu();
    let mm = db.inputs.len();
    let k = m.predict(&db.inputs).unwrap().fused.dim(1);
    let values: Vec<Vec<f64>> = (0..1usize << mm)
        .map(|s| {
            let inputs: Vec<Tensor> = (0..mm).map(|i| if s >> i & 1 == 1 { db.inputs[i].clone() } else { Tensor::zeros(&g, db.inputs[i].shape()).unwrap() }).collect();
            f64s(&m.predict(&inputs).unwrap().fused)
        })
        .collect();
    ref_shapley(&values, mm).iter().map(|p| ref_score(p, labels, k)).collect()
}

fn record(m: &mut dyn Method, db: &DeviceBatch, epoch: usize) -> Vec<(String, Vec<f32>)> {
    let mut rec = Recorder::default();
    rec.add_params(&m.trainable());
    m.train_step(db, &mut rec, epoch).unwrap();
    rec.steps.pop().unwrap()
}

/// The official gradient of a step for MLP encoders (one hidden layer) and a concat head,
/// by hand in f64: CE on the fused logits, whose gradient G = (softmax − onehot)/N reaches
/// each Shapley output φ_m as k_m·G (the backward hooks), hence each subset's logits v(S) as
/// c_S·G with c_S = Σ_{m∈S} w(|S|−1)·k_m − Σ_{m∉S} w(|S|)·k_m; every v(S) is then
/// back-propagated through the head and both encoders (absent inputs are zeros).
fn ref_agm_grads(p: &HashMap<String, Vec<f64>>, xs: &[Vec<f64>], y: &[u32], k: &[f64], names: &[&str]) -> HashMap<String, Vec<f64>> {
    let n = y.len();
    let wo = &p["fusion.fc_out.weight"];
    let classes = p["fusion.fc_out.bias"].len();
    let hid: Vec<usize> = names.iter().map(|m| p[&format!("enc.{m}.fc0.bias")].len()).collect();
    let dims: Vec<usize> = xs.iter().map(|x| x.len() / n).collect();
    let width: usize = hid.iter().sum();
    let m = names.len();
    // forward of subset s: (pre-activations, hidden, logits)
    let forward = |s: usize| {
        let mut pre = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (w, b) = (&p[&format!("enc.{name}.fc0.weight")], &p[&format!("enc.{name}.fc0.bias")]);
            let mut z = vec![0.0; n * hid[i]];
            for r in 0..n {
                for o in 0..hid[i] {
                    let x = |j: usize| if s >> i & 1 == 1 { xs[i][r * dims[i] + j] } else { 0.0 };
                    z[r * hid[i] + o] = b[o] + (0..dims[i]).map(|j| w[o * dims[i] + j] * x(j)).sum::<f64>();
                }
            }
            pre.push(z);
        }
        let h: Vec<Vec<f64>> = pre.iter().map(|z| z.iter().map(|v| v.max(0.0)).collect()).collect();
        let mut logits = vec![0.0; n * classes];
        for r in 0..n {
            let row: Vec<f64> = (0..m).flat_map(|i| h[i][r * hid[i]..(r + 1) * hid[i]].to_vec()).collect();
            for c in 0..classes {
                logits[r * classes + c] = p["fusion.fc_out.bias"][c] + (0..width).map(|j| wo[c * width + j] * row[j]).sum::<f64>();
            }
        }
        (pre, h, logits)
    };
    let full = (1 << m) - 1;
    let (_, _, fused) = forward(full);
    let mut g = vec![0.0; n * classes];
    for r in 0..n {
        let row = &fused[r * classes..(r + 1) * classes];
        let mx = row.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        for c in 0..classes {
            g[r * classes + c] = ((row[c] - mx).exp() / z - if c as u32 == y[r] { 1.0 } else { 0.0 }) / n as f64;
        }
    }
    let mut out: HashMap<String, Vec<f64>> = p.iter().map(|(k, v)| (k.clone(), vec![0.0; v.len()])).collect();
    for s in 1..=full {
        let size = s.count_ones() as usize;
        let c: f64 = (0..m).map(|i| if s >> i & 1 == 1 { agm_w(size - 1, m) * k[i] } else { -agm_w(size, m) * k[i] }).sum();
        let (pre, h, _) = forward(s);
        let mut off = 0;
        for (i, name) in names.iter().enumerate() {
            let mut dpre = vec![0.0; n * hid[i]];
            for r in 0..n {
                for cl in 0..classes {
                    let sd = c * g[r * classes + cl];
                    for j in 0..hid[i] {
                        out.get_mut("fusion.fc_out.weight").unwrap()[cl * width + off + j] += sd * h[i][r * hid[i] + j];
                        dpre[r * hid[i] + j] += sd * wo[cl * width + off + j];
                    }
                }
            }
            for r in 0..n {
                for o in 0..hid[i] {
                    let d = if pre[i][r * hid[i] + o] > 0.0 { dpre[r * hid[i] + o] } else { 0.0 };
                    out.get_mut(&format!("enc.{name}.fc0.bias")).unwrap()[o] += d;
                    if s >> i & 1 == 1 {
                        let w = out.get_mut(&format!("enc.{name}.fc0.weight")).unwrap();
                        for j in 0..dims[i] {
                            w[o * dims[i] + j] += d * xs[i][r * dims[i] + j];
                        }
                    }
                }
            }
            off += hid[i];
        }
        for r in 0..n {
            for cl in 0..classes {
                out.get_mut("fusion.fc_out.bias").unwrap()[cl] += c * g[r * classes + cl];
            }
        }
    }
    out
}

/// Shapley weight |S|!(M−|S|−1)!/M!, written out again for the reference.
fn agm_w(size: usize, m: usize) -> f64 {
    fact(size) * fact(m - size - 1) / fact(m)
}

#[test]
fn agm_subset_seeds_are_the_official_hook_shares() {
    let a = agm::subset_seeds(2);
    // rows: ∅, {a} (pad_visual_out), {v} (pad_audio_out), {a, v} (total_out)
    assert_eq!(a, vec![0.0, 0.0, 0.5, -0.5, -0.5, 0.5, 0.5, 0.5]);
    let a = agm::subset_seeds(3);
    let want: Vec<[f64; 3]> = vec![
        [0.0, 0.0, 0.0],
        [1.0 / 3.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 3.0, -1.0 / 6.0],
        [1.0 / 6.0, 1.0 / 6.0, -1.0 / 3.0],
        [-1.0 / 6.0, -1.0 / 6.0, 1.0 / 3.0],
        [1.0 / 6.0, -1.0 / 3.0, 1.0 / 6.0],
        [-1.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0],
        [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
    ];
    for (s, row) in want.iter().enumerate() {
        for i in 0..3 {
            assert!((a[s * 3 + i] - row[i]).abs() < 1e-15, "subset {s} modality {i}: {} vs {}", a[s * 3 + i], row[i]);
        }
    }
}

#[test]
fn agm_step_gradients_match_the_official_hooked_backward() {
    let (mut joint, db, _) = method_and_batch(&["method.name=joint"]);
    let want_plain = record(joint.as_mut(), &db, 0);
    let agm_sets = ["method.name=agm", "method.agm.clip=0", "method.agm.end_epoch=5"];
    let (mut m, _, c) = method_and_batch(&agm_sets);
    let labels = db.labels.to_vec_u32().unwrap();
    let s = ref_batch_scores(m.as_ref(), &db, &labels);
    let a = &c.method.agm;
    // a running mean far from the batch's scores gives coefficients far from 1 (the first
    // step's i = 1 then replaces it by the scores)
    let t0 = [2.0, 0.5];
    let running = |m: &dyn Method| m.buffers().into_iter().find(|(n, _)| n == "agm.running_score").unwrap().1;
    running(m.as_ref()).assign(&upload(&gpu(), &t0, &[2])).unwrap();
    let (coef, t1) = ref_coefficients(&s, &t0, a.alpha as f64, a.cap as f64, 1.0);
    assert!(coef.iter().all(|c| (c - 1.0).abs() > 0.3), "the test needs coefficients away from 1: {coef:?}");
    let params: HashMap<String, Vec<f64>> = m.params().iter().map(|p| (p.name.clone(), f64s(&p.tensor))).collect();
    let xs: Vec<Vec<f64>> = db.inputs.iter().map(f64s).collect();
    let names = ["audio", "visual"];
    let want = ref_agm_grads(&params, &xs, &labels, &coef, &names);
    let got = record(m.as_mut(), &db, 0);
    assert_eq!(got.len(), params.len(), "every parameter gets a gradient");
    for (name, g) in &got {
        // four subsets' gradients of either sign cancel in the sum: an element's f32 error
        // scales with the tensor's largest entry (≈ 1e-5 of it over ~10² f32 terms), not its own size
        let peak = want[name].iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert_close(&format!("step 1: {name}"), g, &want[name], 1e-4, 1e-5 * peak);
    }
    // the encoders' weights really are modulated: k_audio·(plain) is far from plain
    let enc = |v: &[(String, Vec<f32>)]| v.iter().find(|(n, _)| n == "enc.audio.fc0.weight").unwrap().1.clone();
    let (ga, gp) = (enc(&got), enc(&want_plain));
    let ratio = ga.iter().zip(&gp).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>() / gp.iter().map(|b| (*b as f64).powi(2)).sum::<f64>();
    assert!((ratio - 1.0).abs() > 0.2, "audio encoder gradient / joint's = {ratio}, k = {coef:?}");
    // the Recorder changed nothing: the same batch gives the same scores, now equal to the
    // running mean, so η = r, every coefficient is exp(0) = 1 and the gradient is joint training's
    let (coef2, _) = ref_coefficients(&s, &t1, a.alpha as f64, a.cap as f64, 2.0);
    assert_close("k at step 2", &coef2.iter().map(|v| *v as f32).collect::<Vec<_>>(), &[1.0, 1.0], 1e-12, 0.0);
    for ((name, g), (_, w)) in record(m.as_mut(), &db, 0).iter().zip(&want_plain) {
        assert_close(&format!("step 2: {name}"), g, &w.iter().map(|v| *v as f64).collect::<Vec<_>>(), 1e-4, 1e-7);
    }
    assert_close("running mean", &running(m.as_ref()).to_vec().unwrap(), &s, 1e-5, 1e-6);
    assert_eq!(m.state()["steps"], 2);
    // before start_epoch the hooks' scales are their initial 1: joint training's gradients,
    // bit for bit
    let (mut early, _, _) = method_and_batch(&["method.name=agm", "method.agm.clip=0", "method.agm.start_epoch=3", "method.agm.end_epoch=5"]);
    running(early.as_ref()).assign(&upload(&gpu(), &t0, &[2])).unwrap();
    assert_eq!(record(early.as_mut(), &db, 0), want_plain, "epoch 0, before the window");
    // after end_epoch the official hooks keep the last modulated step's scales
    // (`update_scale` is only called inside the window): the hooked backward with the frozen
    // coefficients, whatever this step's scores say
    let (mut late, _, _) = method_and_batch(&agm_sets);
    running(late.as_ref()).assign(&upload(&gpu(), &t0, &[2])).unwrap();
    record(late.as_mut(), &db, 5);
    running(late.as_ref()).assign(&upload(&gpu(), &[0.5, 2.0], &[2])).unwrap();
    for (name, g) in record(late.as_mut(), &db, 6) {
        let peak = want[&name].iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert_close(&format!("epoch 6: {name}"), &g, &want[&name], 1e-4, 1e-5 * peak);
    }
}

#[test]
fn agm_clips_every_gradient_only_when_a_head_weight_gradient_leaves_the_bound() {
    let (mut joint, db, _) = method_and_batch(&["method.name=joint"]);
    let plain = record(joint.as_mut(), &db, 0);
    let head_peak = plain.iter().filter(|(n, _)| n.starts_with("fusion.") && n.ends_with("weight")).flat_map(|(_, g)| g.iter().map(|v| v.abs() as f64)).fold(0.0, f64::max);
    let norm = plain.iter().flat_map(|(_, g)| g.iter().map(|v| (*v as f64).powi(2))).sum::<f64>().sqrt();
    // α = 0: coefficients 1, so only the clipping acts
    for (clip, clipped) in [(0.5 * head_peak, true), (1.01 * head_peak, false)] {
        let (mut m, _, _) = method_and_batch(&["method.name=agm", "method.agm.alpha=0", &format!("method.agm.clip={clip}")]);
        let got = record(m.as_mut(), &db, 0);
        let f = if clipped { (clip / (norm + 1e-6)).min(1.0) } else { 1.0 };
        for ((name, g), (_, w)) in got.iter().zip(&plain) {
            let want: Vec<f64> = w.iter().map(|&v| f * v as f64).collect();
            assert_close(&format!("clip {clip} ({clipped}): {name}"), g, &want, 1e-4, 1e-8);
        }
        if clipped {
            assert!(clip < norm, "the clipped case must shrink the gradient: clip {clip}, norm {norm}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// end to end
// ---------------------------------------------------------------------------------------

#[test]
fn agm_trains_on_synthetic_data() {
    // default synthetic data: audio weak, visual strong; 10 classes (chance 0.1)
    let lines = train_log(&tiny(&["method.name=agm", "train.epochs=5", "data.n_train=480", "data.n_test=200", "method.agm.end_epoch=2"]), &tmp("e2e-agm"));
    assert_eq!(lines.len(), 5);
    let last = lines.last().unwrap();
    let acc = last["test"]["acc"].as_f64().unwrap();
    assert!(acc > 0.5, "test accuracy {acc}: {last}");
    let losses: Vec<f64> = lines.iter().map(|l| l["train"]["loss"].as_f64().unwrap()).collect();
    assert!(losses.last().unwrap() < &losses[0], "the loss must fall: {losses:?}");
    for (e, l) in lines.iter().enumerate() {
        assert_eq!(l["agm"]["active"].as_bool(), Some(e <= 2), "{l}");
        for m in ["audio", "visual"] {
            let k = l["agm"]["coef"][m].as_f64().unwrap();
            assert!(k.is_finite() && k > 0.0, "{l}");
        }
    }
    // after end_epoch every step applies the last modulated step's coefficients: the same
    // in every later epoch, and not joint training's 1
    for m in ["audio", "visual"] {
        let after: Vec<f64> = lines[3..].iter().map(|l| l["agm"]["coef"][m].as_f64().unwrap()).collect();
        assert_eq!(after[0], after[1], "frozen coefficients of {m}: {after:?}");
        assert_ne!(after[0], 1.0, "{m}: the frozen coefficient is the last step's, not 1");
    }
    // the weak modality's Shapley output is the worse classifier
    let s = &lines[0]["agm"]["score"];
    assert!(s["audio"].as_f64().unwrap() > s["visual"].as_f64().unwrap(), "{s}");
}

#[test]
fn agm_handles_three_modalities_and_refuses_too_many() {
    let three = "data.modalities=[{name=\"a\",shape=[1,8,8],signal=0.1},{name=\"b\",shape=[1,8,8],signal=0.6},{name=\"c\",shape=[1,8,8],signal=0.3}]";
    let lines = train_log(&tiny(&["method.name=agm", three, "train.epochs=2"]), &tmp("three-agm"));
    let last = lines.last().unwrap();
    assert_eq!(last["agm"]["coef"].as_object().unwrap().len(), 3, "{last}");
    assert!(last["train"]["loss"].as_f64().unwrap().is_finite());
    for m in ["a", "b", "c"] {
        let (k, s) = (last["agm"]["coef"][m].as_f64().unwrap(), last["agm"]["score"][m].as_f64().unwrap());
        assert!(k.is_finite() && k > 0.0 && s.is_finite() && s > 0.0, "{last}");
    }
    let nine: Vec<String> = (0..9).map(|i| format!("{{name=\"m{i}\",shape=[1,2,2],signal=0.5}}")).collect();
    let (cfg, text) = config::load(None, &tiny(&["method.name=agm", &format!("data.modalities=[{}]", nine.join(","))])).unwrap();
    let dir = tmp("nine-agm");
    let mut o = TrainOptions::new(&dir);
    o.progress = false;
    let e = train::train(&gpu(), &cfg, &text, &o).err().expect("nine modalities must be refused").to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e.contains("data.modalities") && e.contains("at most 8"), "{e}");
}

#[test]
fn resume_after_a_kill_agm_cnn() {
    // the running mean of the scores and the step count are checkpointed state; batch norm
    // makes the eval-mode subset forwards differ from the training forward
    let sets = tiny(&["method.name=agm", "method.agm.alpha=1.5", "model.encoder=small_cnn", "model.width=4", "model.depth=2", "train.epochs=5", "data.n_train=480"]);
    resume_through_the_cli_is_exact("agm", &sets, 5);
}

#[test]
fn agm_config_errors_name_the_field_and_defaults_are_the_official() {
    let err = |s: &[&str]| config::load(None, &sets(s)).unwrap_err().to_string();
    for (set, field) in [("method.agm.alpha=-1", "method.agm.alpha"), ("method.agm.clip=-0.5", "method.agm.clip"), ("method.agm.cap=nan", "method.agm.cap")] {
        let e = err(&["method.name=agm", set]);
        assert!(e.contains(field), "{set}: {e}");
    }
    let e = err(&["method.agm.start_epoch=5", "method.agm.end_epoch=2"]);
    assert!(e.contains("method.agm.start_epoch"), "{e}");
    let e = err(&["method.agm.bogus=1"]);
    assert!(e.contains("bogus"), "{e}");
    let c = config::load(None, &sets(&["method.name=agm"])).unwrap().0;
    let a = &c.method.agm;
    assert_eq!((a.alpha, a.start_epoch, a.end_epoch, a.cap, a.clip), (1.0, 0, 19, 10.0, 1.0));
}

// ---------------------------------------------------------------------------------------
// G-Blending
// ---------------------------------------------------------------------------------------

fn run_losses(tf: f64, vf: f64, tl: f64, vl: f64) -> g_blending::RunLosses {
    g_blending::RunLosses { train_first: tf, val_first: vf, train_last: tl, val_last: vl }
}

#[test]
fn g_blending_weights_follow_the_overfitting_to_generalisation_ratio() {
    // G = val_last − val_first, O = (val − train)_last − (val − train)_first, w ∝ |G|/O²
    let runs = [
        run_losses(2.0, 2.25, 1.0, 1.75),  // G = −0.5, O = 0.75 − 0.25 = 0.5: 2
        run_losses(2.0, 2.0, 0.5, 1.5),    // G = −0.5, O = 1 − 0 = 1: 0.5
        run_losses(2.0, 2.0, 0.75, 1.0),   // G = −1, O = 0.25: 16
    ];
    let w = g_blending::blend_weights(&runs).unwrap();
    assert_eq!(w, vec![2.0 / 18.5, 0.5 / 18.5, 16.0 / 18.5]);
    // a rising validation loss counts by its size (|G|), as BalanceBenchmark's abs(g)
    // (G = 0.5, O = 1: 0.5; G = −0.25, O = 0.25: 4)
    let w = g_blending::blend_weights(&[run_losses(1.0, 1.0, 0.5, 1.5), run_losses(1.0, 1.0, 0.5, 0.75)]).unwrap();
    assert_eq!(w, vec![0.5 / 4.5, 4.0 / 4.5]);
    // degenerate estimates: an unchanged overfitting (O = 0), no generalisation change at all
    assert_eq!(g_blending::blend_weights(&[run_losses(2.0, 2.0, 1.0, 1.0), run_losses(2.0, 2.5, 1.0, 1.5)]), None);
    assert_eq!(g_blending::blend_weights(&[run_losses(2.0, 2.0, 1.0, 2.0), run_losses(2.0, 2.5, 1.0, 2.5)]), None);
    assert_eq!(g_blending::blend_weights(&[run_losses(2.0, f64::NAN, 1.0, 2.0), run_losses(2.0, 2.5, 1.0, 2.0)]), None);
}

#[test]
fn g_blending_step_is_the_weighted_sum_of_the_view_and_fused_gradients() {
    let base = ["method.name=g_blending"];
    let with_weights = |w: [f64; 3]| {
        let (mut m, db, _) = method_and_batch(&base);
        m.restore(&serde_json::json!({ "weights": w }), &mut Recorder::default()).unwrap();
        record(m.as_mut(), &db, 0)
    };
    // weight on the fused CE alone: joint training's gradient
    let (mut joint, db, _) = method_and_batch(&["method.name=joint"]);
    let plain = record(joint.as_mut(), &db, 0);
    let fused_only = with_weights([0.0, 0.0, 1.0]);
    for ((name, g), (_, w)) in fused_only.iter().zip(&plain) {
        assert_close(&format!("fused only: {name}"), g, &w.iter().map(|v| *v as f64).collect::<Vec<_>>(), 1e-5, 1e-8);
    }
    // linear in the weights: each one-hot weight gives one loss's gradient
    let parts = [with_weights([1.0, 0.0, 0.0]), with_weights([0.0, 1.0, 0.0]), fused_only];
    let w = [0.2, 0.3, 0.5];
    let got = with_weights(w);
    for (j, (name, g)) in got.iter().enumerate() {
        let want: Vec<f64> = (0..g.len()).map(|i| (0..3).map(|k| w[k] * parts[k][j].1[i] as f64).sum()).collect();
        assert_close(&format!("blend: {name}"), g, &want, 1e-4, 1e-7);
    }
    // the audio view's CE does not reach the visual encoder
    assert!(parts[0].iter().filter(|(n, _)| n.starts_with("enc.visual.")).all(|(_, g)| g.iter().all(|v| *v == 0.0)));
}

#[test]
fn g_blending_trains_on_synthetic_data_and_estimates_every_super_epoch() {
    let lines = train_log(&tiny(&["method.name=g_blending", "method.g_blending.super_epoch=2", "train.epochs=4", "data.n_train=480", "data.n_val=96", "data.n_test=200"]), &tmp("e2e-gb"));
    assert_eq!(lines.len(), 4);
    let last = lines.last().unwrap();
    assert!(last["test"]["acc"].as_f64().unwrap() > 0.5, "{last}");
    let mut current: Option<Vec<f64>> = None;
    for (e, l) in lines.iter().enumerate() {
        let gb = &l["g_blending"];
        let names = ["audio", "visual", "fused"];
        let w: Vec<f64> = names.iter().map(|n| gb["weights"][n].as_f64().unwrap()).collect();
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{gb}");
        if e % 2 == 0 {
            // the logged weights are the blend of the logged losses, exactly
            let runs: Vec<_> = names
                .iter()
                .map(|n| {
                    let r = &gb["estimate"]["runs"][n];
                    let f = |k: &str| r[k].as_f64().unwrap();
                    run_losses(f("train_first"), f("val_first"), f("train_last"), f("val_last"))
                })
                .collect();
            assert_eq!(gb["estimate"]["degenerate"], false, "{gb}");
            assert_eq!(g_blending::blend_weights(&runs).unwrap(), w, "{gb}");
            // the copies learn: their training loss falls over the super-epoch
            assert!(runs.iter().all(|r| r.train_last < r.train_first), "{gb}");
            // the weak audio alone (visual zeroed) generalises worse than both together
            assert!(runs[0].val_last > runs[2].val_last, "{gb}");
            current = Some(w);
        } else {
            assert!(gb.get("estimate").is_none(), "no estimate between super-epochs: {gb}");
            assert_eq!(current.as_ref(), Some(&w), "the weights hold until the next estimate");
        }
    }
}

#[test]
fn g_blending_needs_a_validation_split_and_handles_three_modalities() {
    let (cfg, text) = config::load(None, &tiny(&["method.name=g_blending"])).unwrap();
    let dir = tmp("gb-noval");
    let mut o = TrainOptions::new(&dir);
    o.progress = false;
    let e = train::train(&gpu(), &cfg, &text, &o).err().expect("no validation split must be refused").to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e.contains("validation") && e.contains("data.n_val"), "{e}");
    let three = "data.modalities=[{name=\"a\",shape=[1,8,8],signal=0.1},{name=\"b\",shape=[1,8,8],signal=0.6},{name=\"c\",shape=[1,8,8],signal=0.3}]";
    let lines = train_log(&tiny(&["method.name=g_blending", three, "data.n_val=64", "method.g_blending.super_epoch=2", "train.epochs=2"]), &tmp("three-gb"));
    let w = lines[0]["g_blending"]["weights"].as_object().unwrap().clone();
    assert_eq!(w.len(), 4, "{w:?}");
    assert!(lines.last().unwrap()["train"]["loss"].as_f64().unwrap().is_finite());
}

#[test]
fn resume_after_a_kill_g_blending_cnn() {
    // the weights are method state: a run resumed between estimates must use the stored ones
    let sets = tiny(&["method.name=g_blending", "method.g_blending.super_epoch=2", "model.encoder=small_cnn", "model.width=4", "model.depth=2", "train.epochs=5", "data.n_train=320", "data.n_val=64"]);
    resume_through_the_cli_is_exact("g_blending", &sets, 5);
}

#[test]
fn g_blending_config_errors_name_the_field() {
    let err = |s: &[&str]| config::load(None, &sets(s)).unwrap_err().to_string();
    let e = err(&["method.name=g_blending", "method.g_blending.super_epoch=1"]);
    assert!(e.contains("method.g_blending.super_epoch"), "{e}");
    let e = err(&["method.g_blending.bogus=1"]);
    assert!(e.contains("bogus"), "{e}");
    assert_eq!(config::load(None, &sets(&["method.name=g_blending"])).unwrap().0.method.g_blending.super_epoch, 10);
}
