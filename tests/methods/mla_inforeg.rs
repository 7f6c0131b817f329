//! MLA and InfoReg (issue 14): each one's distinguishing computation against a CPU f64
//! reference written out from the official code (MLA's projection update, the head's
//! projected gradient inside a step and the entropy fusion; InfoReg's window statistic, its
//! regulation strengths and the regulated gradient and trace of a step), end-to-end training
//! on synthetic data, three modalities, exact resume through the CLI after a kill, and config
//! errors that name the field.
use crate::common;
use common::recorder::Recorder;
use common::resume::{log_lines, resume_through_the_cli_is_exact, resume_through_the_cli_is_exact_killed_after, tmp};
use common::*;
use equimodal::config::{self, Config};
use equimodal::data::{self, Loader, LoaderConfig, Split};
use equimodal::methods::{inforeg, mla, Method, MlaDenominator, MlaFusion, MlaProjection};
use equimodal::optim::Optimizer;
use equimodal::train::{self, TrainOptions};
use equimodal::Tensor;
use rand::SeedableRng;
use std::sync::Arc;

fn sets(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn tiny(extra: &[&str]) -> Vec<String> {
    let mut v = sets(&["data.n_train=160", "data.n_test=64", "model.encoder=mlp", "model.hidden=[32]", "train.batch_size=32", "train.workers=1", "train.epochs=3"]);
    v.extend(sets(extra));
    v
}

fn train_log(list: &[String], name: &str) -> Vec<serde_json::Value> {
    let dir = tmp(name);
    let (cfg, text) = config::load(None, list).unwrap();
    let mut o = TrainOptions::new(&dir);
    o.progress = false;
    train::train(&gpu(), &cfg, &text, &o).unwrap();
    let lines = log_lines(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    lines
}

/// A method built from `extra` settings and the first training batch of the tiny data.
fn method_and_batch(extra: &[&str]) -> (Box<dyn Method>, equimodal::methods::DeviceBatch, Vec<u32>) {
    let c: Config = config::load(None, &tiny(extra)).unwrap().0;
    let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let m = equimodal::methods::build(&gpu(), &c.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).unwrap();
    let mut lc = LoaderConfig::eval(32);
    lc.workers = 1;
    let hb = Loader::new(ds.clone(), Split::Train, lc).unwrap().next().unwrap().unwrap();
    let db = train::upload_batch(&gpu(), &hb, ds.num_classes()).unwrap();
    (m, db, hb.labels.clone())
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().into_iter().map(|v| v as f64).collect()
}

fn softmax_row(r: &[f64]) -> Vec<f64> {
    let mx = r.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = r.iter().map(|v| (v - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn entropy_row(r: &[f64]) -> f64 {
    -softmax_row(r).iter().map(|p| p * p.ln()).sum::<f64>()
}

/// Σ_n softmax(logits_n)[y_n]
fn ref_score(logits: &[f64], y: &[u32], k: usize) -> f64 {
    (0..y.len()).map(|i| softmax_row(&logits[i * k..(i + 1) * k])[y[i] as usize]).sum()
}

// ---------------------------------------------------------------------------------------
// MLA reference (f64), written out from utils.py (GSPlugin.before_update) and main.py
// ---------------------------------------------------------------------------------------

/// P' = P − (k kᵀ) ⊘ (α + k r) (official, elementwise) or P − k kᵀ / (α + r·k) (scalar),
/// k = P rᵀ, r = mean of the features; then P' / ‖P'‖_F.
fn ref_projection(p: &[f64], feats: &[f64], n: usize, d: usize, alpha: f64, den: MlaDenominator) -> Vec<f64> {
    let r: Vec<f64> = (0..d).map(|j| (0..n).map(|i| feats[i * d + j]).sum::<f64>() / n as f64).collect();
    let k: Vec<f64> = (0..d).map(|i| (0..d).map(|j| p[i * d + j] * r[j]).sum()).collect();
    let rk: f64 = r.iter().zip(&k).map(|(a, b)| a * b).sum();
    let den_at = |i: usize, j: usize| match den {
        MlaDenominator::Outer => alpha + k[i] * r[j],
        MlaDenominator::Scalar => alpha + rk,
    };
    let next: Vec<f64> = (0..d * d).map(|ij| p[ij] - k[ij / d] * k[ij % d] / den_at(ij / d, ij % d)).collect();
    let norm = next.iter().map(|v| v * v).sum::<f64>().sqrt();
    next.iter().map(|v| v / norm).collect()
}

/// G·Pᵀ (G [K, D], P [D, D]).
fn ref_times_pt(g: &[f64], p: &[f64], k: usize, d: usize) -> Vec<f64> {
    (0..k * d).map(|ij| (0..d).map(|e| g[(ij / d) * d + e] * p[(ij % d) * d + e]).sum()).collect()
}

/// The fused logits: w = softmax over modalities of −entropy (per batch: of the softmax over
/// the batch axis, summed; per sample: over classes), or fixed normalised weights.
fn ref_fuse(logits: &[Vec<f64>], n: usize, k: usize, rule: MlaFusion, fixed: &[f64]) -> Vec<f64> {
    let m = logits.len();
    let weights_of = |h: &[f64]| -> Vec<f64> { softmax_row(&h.iter().map(|v| -v).collect::<Vec<_>>()) };
    let w: Vec<Vec<f64>> = match rule {
        MlaFusion::Fixed => {
            let s: f64 = fixed.iter().sum();
            vec![fixed.iter().map(|v| v / s).collect(); n]
        }
        MlaFusion::EntropyBatch => {
            let h: Vec<f64> = logits.iter().map(|l| (0..k).map(|c| entropy_row(&(0..n).map(|i| l[i * k + c]).collect::<Vec<_>>())).sum()).collect();
            vec![weights_of(&h); n]
        }
        MlaFusion::EntropySample => (0..n).map(|i| weights_of(&logits.iter().map(|l| entropy_row(&l[i * k..(i + 1) * k])).collect::<Vec<_>>())).collect(),
    };
    (0..n * k).map(|ij| (0..m).map(|mm| w[ij / k][mm] * logits[mm][ij]).sum()).collect()
}

#[test]
fn mla_projection_update_and_fusion_match_the_f64_reference() {
    let g = gpu();
    let mut r = Rng::new(5);
    let (n, d, k) = (7, 5, 3);
    // alpha: 0.1^(1 + b/B)
    assert_eq!(mla::alpha(0, 10), 0.1);
    assert_close("alpha(5, 10)", &[mla::alpha(5, 10)], &[0.1f64.powf(1.5)], 1e-6, 0.0);
    assert_eq!(mla::alpha(3, 0), 0.1, "unknown epoch length: fraction 0");
    // two successive updates from the identity, then the two gradient rules
    let eye: Vec<f64> = (0..d * d).map(|i| if i % (d + 1) == 0 { 1.0 } else { 0.0 }).collect();
    let feats: Vec<Vec<f64>> = (0..2).map(|_| r.normals(n * d).into_iter().map(|v| v + 0.5).collect()).collect();
    let mut finals = Vec::new();
    for den in [MlaDenominator::Scalar, MlaDenominator::Outer] {
        let (mut p, mut pt) = (eye.clone(), upload(&g, &eye, &[d, d]));
        for (step, alpha) in [0.1f32, 0.0316].into_iter().enumerate() {
            pt = mla::update_projection(&pt, &upload(&g, &feats[step], &[n, d]), alpha, den).unwrap();
            p = ref_projection(&p, &round_f32(&feats[step]), n, d, alpha as f64, den);
            assert_close(&format!("{den:?}: P after update {step}"), &pt.to_vec().unwrap(), &p, 1e-4, 1e-6);
        }
        finals.push((p, pt));
    }
    // the scalar form keeps P symmetric, the official elementwise one does not
    let sym = |p: &[f64]| (0..d * d).map(|ij| (p[ij] - p[(ij % d) * d + ij / d]).abs()).fold(0.0, f64::max);
    assert!(sym(&finals[0].0) < 1e-12 && sym(&finals[1].0) > 1e-3, "{} {}", sym(&finals[0].0), sym(&finals[1].0));
    let (p, pt) = finals.pop().unwrap();
    let gw = r.normals(k * d);
    let gt = upload(&g, &gw, &[k, d]);
    let want = ref_times_pt(&round_f32(&gw), &p, k, d);
    assert_close("replace: G Pᵀ", &mla::project(&gt, &pt, MlaProjection::Replace).unwrap().to_vec().unwrap(), &want, 1e-4, 1e-6);
    let add: Vec<f64> = gw.iter().zip(&want).map(|(a, b)| a + b).collect();
    assert_close("add: G + G Pᵀ", &mla::project(&gt, &pt, MlaProjection::Add).unwrap().to_vec().unwrap(), &add, 1e-4, 1e-6);
    assert_eq!(mla::project(&gt, &pt, MlaProjection::Off).unwrap().to_vec().unwrap(), to_f32(&gw));

    // fusion of three modalities under each rule; modality 1 is the confident one
    let (n, k) = (6, 4);
    let logits: Vec<Vec<f64>> = [0.5, 3.0, 1.0].iter().map(|s| r.normals(n * k).into_iter().map(|v| s * v).collect()).collect();
    let lt: Vec<Tensor> = logits.iter().map(|l| upload(&g, l, &[n, k])).collect();
    let lr: Vec<Vec<f64>> = logits.iter().map(|l| round_f32(l)).collect();
    for (rule, fixed) in [(MlaFusion::EntropyBatch, vec![]), (MlaFusion::EntropySample, vec![]), (MlaFusion::Fixed, vec![0.35f32, 0.25, 0.4]), (MlaFusion::Fixed, vec![])] {
        let fx: Vec<f64> = if fixed.is_empty() { vec![1.0; 3] } else { fixed.iter().map(|&v| v as f64).collect() };
        let got = mla::fuse(&lt, rule, &fixed).unwrap().to_vec().unwrap();
        assert_close(&format!("{rule:?} {fixed:?}"), &got, &ref_fuse(&lr, n, k, rule, &fx), 1e-4, 1e-6);
    }
    // the batch rule weighs whole modalities: the sharpest logits get the largest weight
    let batch = ref_fuse(&lr, n, k, MlaFusion::EntropyBatch, &[]);
    let sample = ref_fuse(&lr, n, k, MlaFusion::EntropySample, &[]);
    assert!(batch.iter().zip(&sample).any(|(a, b)| (a - b).abs() > 1e-3), "the two entropy rules must differ on this data");
    assert!(mla::fuse(&lt, MlaFusion::Fixed, &[1.0, 2.0]).is_err(), "two weights for three modalities");
}

#[test]
fn mla_step_alternates_modalities_and_projects_the_head_gradient() {
    // one step = one update per modality through the shared head; the first update of the
    // run is not projected, the second one is, with P updated from the visual features
    let run = |projection: &str| {
        let (mut m, db, y) = method_and_batch(&["method.name=mla", &format!("method.mla.projection={projection}")]);
        m.set_epoch_batches(4);
        m.begin_epoch(0).unwrap();
        let mut rec = Recorder::default();
        rec.add_params(&m.trainable());
        m.train_step(&db, &mut rec, 0).unwrap();
        let feats: Vec<Vec<f64>> = m.features(&db.inputs).unwrap().iter().map(|f| f64s(f.as_ref().unwrap())).collect();
        (m, rec, feats, y)
    };
    let (off, rec_off, feats, y) = run("off");
    let names = |s: &[(String, Vec<f32>)]| -> Vec<String> { s.iter().map(|(n, _)| n.clone()).collect() };
    assert_eq!(rec_off.steps.len(), 2, "one optimizer step per modality");
    for (i, (mine, other)) in [("enc.audio.", "enc.visual."), ("enc.visual.", "enc.audio.")].iter().enumerate() {
        let ns = names(&rec_off.steps[i]);
        assert!(ns.iter().any(|n| n.starts_with(mine)) && !ns.iter().any(|n| n.starts_with(other)), "update {i}: {ns:?}");
        assert!(ns.contains(&"head.weight".to_string()) && ns.contains(&"head.bias".to_string()), "update {i}: {ns:?}");
    }
    let grad = |rec: &Recorder, step: usize, name: &str| -> Vec<f64> {
        rec.steps[step].iter().find(|(n, _)| n == name).unwrap().1.iter().map(|&v| v as f64).collect()
    };
    // the head's plain gradient of the visual update: CE(head(f_v)) in f64 from the features
    let d = feats[1].len() / y.len();
    let k = 10;
    let hw = f64s(&off.params().iter().find(|p| p.name == "head.weight").unwrap().tensor);
    let hb = f64s(&off.params().iter().find(|p| p.name == "head.bias").unwrap().tensor);
    let n = y.len();
    let mut g_ref = vec![0.0; k * d];
    for i in 0..n {
        let z: Vec<f64> = (0..k).map(|c| hb[c] + (0..d).map(|e| hw[c * d + e] * feats[1][i * d + e]).sum::<f64>()).collect();
        let p = softmax_row(&z);
        for c in 0..k {
            let dz = (p[c] - if y[i] as usize == c { 1.0 } else { 0.0 }) / n as f64;
            for e in 0..d {
                g_ref[c * d + e] += dz * feats[1][i * d + e];
            }
        }
    }
    assert_close("visual update: plain head gradient (projection off)", &to_f32(&grad(&rec_off, 1, "head.weight")), &g_ref, 1e-3, 1e-6);
    let eye: Vec<f64> = (0..d * d).map(|i| if i % (d + 1) == 0 { 1.0 } else { 0.0 }).collect();
    let p_ref = ref_projection(&eye, &feats[1], n, d, 0.1, MlaDenominator::Outer);
    for rule in ["replace", "add"] {
        let (m, rec, _, _) = run(rule);
        assert_close(&format!("{rule}: P"), &m.buffers().iter().find(|b| b.0 == "mla.projection").unwrap().1.to_vec().unwrap(), &p_ref, 1e-4, 1e-6);
        // the first update of the run (audio) is not projected
        assert_eq!(grad(&rec, 0, "head.weight"), grad(&rec_off, 0, "head.weight"), "{rule}: first update");
        let gp = ref_times_pt(&g_ref, &p_ref, k, d);
        let want: Vec<f64> = if rule == "add" { g_ref.iter().zip(&gp).map(|(a, b)| a + b).collect() } else { gp };
        assert_close(&format!("{rule}: projected head gradient"), &to_f32(&grad(&rec, 1, "head.weight")), &want, 1e-3, 1e-6);
        // the bias and the encoders keep their gradients
        assert_eq!(grad(&rec, 1, "head.bias"), grad(&rec_off, 1, "head.bias"), "{rule}: bias");
        for (name, _) in rec.steps[1].iter().filter(|(n, _)| n.starts_with("enc.")) {
            assert_eq!(grad(&rec, 1, name), grad(&rec_off, 1, name), "{rule}: {name}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// InfoReg reference (f64), written out from main.py (train_epoch)
// ---------------------------------------------------------------------------------------

/// `audio_trace_list = [0]*10 + traces; tr1 = sum(l[-10:])/10; tr2 = sum(l[-11:-1])/10;
/// k = (tr1 - tr2)/tr1` (epoch 0: k = 1).
fn ref_k(traces: &[f64], w: usize) -> f64 {
    if traces.is_empty() {
        return 1.0;
    }
    let mut l = vec![0.0; w];
    l.extend_from_slice(traces);
    let n = l.len();
    let tr1 = l[n - w..].iter().sum::<f64>() / w as f64;
    let tr2 = l[n - w - 1..n - 1].iter().sum::<f64>() / w as f64;
    (tr1 - tr2) / tr1
}

/// β for two or more modalities: c_m·exp(tanh(s_m − best other)) for the strict leader.
fn ref_betas(s: &[f64], c: &[f64]) -> Vec<f64> {
    (0..s.len())
        .map(|i| {
            let other = (0..s.len()).filter(|&j| j != i).map(|j| s[j]).fold(f64::MIN, f64::max);
            if s[i] > other {
                c[i] * (s[i] - other).tanh().exp()
            } else {
                0.0
            }
        })
        .collect()
}

#[test]
fn inforeg_window_statistic_and_regulation_strengths_match_the_official_code() {
    let traces = [4.0, 9.0, 12.0, 13.0, 13.5, 13.6, 13.6, 13.5, 13.4, 13.3, 13.2, 13.0, 12.9];
    for w in [10, 3, 1] {
        for e in 0..=traces.len() {
            let (got, want) = (inforeg::window_k(&traces[..e], w), ref_k(&traces[..e], w));
            assert!((got - want).abs() <= 1e-12 * want.abs(), "k window {w} epoch {e}: {got} vs {want}");
        }
    }
    // hand-computed: epoch 1 → 1; epoch 2 → T1/(T0+T1) = 9/13; window 1 → (T_last − T_prev)/T_last
    assert_eq!(inforeg::window_k(&[], 10), 1.0);
    assert_eq!(inforeg::window_k(&[4.0], 10), 1.0);
    assert!((inforeg::window_k(&[4.0, 9.0], 10) - 9.0 / 13.0).abs() < 1e-15);
    assert!((inforeg::window_k(&[4.0, 9.0, 12.0], 1) - 0.25).abs() < 1e-15);
    assert_eq!(inforeg::window_k(&[0.0, 0.0], 10), 0.0, "no information at all: the window is closed");

    let g = gpu();
    let c = [0.95f32, 0.1, 0.1];
    for s in [vec![20.0, 17.5], vec![17.5, 20.0], vec![20.0, 20.0], vec![20.0, 19.6], vec![3.0, 9.0, 8.2], vec![9.0, 3.0, 9.0], vec![12.0, 3.0, 11.5]] {
        let m = s.len();
        let got = inforeg::betas(&upload(&g, &s, &[m]), &c[..m]).unwrap().to_vec().unwrap();
        let cf: Vec<f64> = c[..m].iter().map(|&v| v as f64).collect();
        assert_close(&format!("betas {s:?}"), &got, &ref_betas(&s, &cf), 1e-5, 1e-7);
    }
    // the official two-modality branches, written out: audio leads by 2.5 → 0.95·e^tanh(2.5)
    let got = inforeg::betas(&upload(&g, &[20.0, 17.5], &[2]), &[0.95, 0.1]).unwrap().to_vec().unwrap();
    assert_close("audio leads", &got, &[0.95 * 2.5f64.tanh().exp(), 0.0], 1e-6, 0.0);
    assert!(inforeg::betas(&upload(&g, &[1.0], &[1]), &[0.95]).is_err(), "one modality is a typed error");
}

#[test]
fn inforeg_step_pulls_the_leading_encoder_towards_the_epoch_start() {
    // two copies of the same model, one with β = 0; after `begin_epoch` both encoders are
    // moved by the same δ, so the regulated gradient differs by β_lead·δ on the leading
    // modality's encoder and nowhere else; the logged trace is Σ mean(g²) of its weights
    let build = |beta: &str| {
        let (mut m, db, y) = method_and_batch(&["method.name=inforeg", "method.inforeg.sufficient=visual", beta, beta.replace("sufficient", "other").as_str()]);
        m.begin_epoch(0).unwrap();
        let mut r = Rng::new(3);
        for p in m.params().iter().filter(|p| p.name.starts_with("enc.")) {
            let v: Vec<f64> = f64s(&p.tensor).iter().map(|v| v + 0.01 * r.normal()).collect();
            p.tensor.write(&to_f32(&v)).unwrap();
        }
        (m, db, y)
    };
    let (mut zero, db, y) = build("method.inforeg.beta_sufficient=0");
    let (mut reg, _, _) = build("method.inforeg.beta_sufficient=0.95");
    // the scores of the step, from the views of the moved model (MLP: eval = train forward)
    let views = reg.predict(&db.inputs).unwrap();
    let s: Vec<f64> = views.per_modality.iter().map(|v| ref_score(&f64s(v.as_ref().unwrap()), &y, 10)).collect();
    let c = [0.95, 0.95]; // the `other` factor set equal, so either leader is regulated
    let beta = ref_betas(&s, &c);
    let lead = if s[0] > s[1] { "audio" } else { "visual" };
    assert!(beta.iter().filter(|b| **b > 0.0).count() == 1, "{s:?}");
    let mut ra = Recorder::default();
    ra.add_params(&zero.trainable());
    let mut rb = Recorder::default();
    rb.add_params(&reg.trainable());
    assert!(zero.as_ref().params().len() == reg.params().len());
    zero.train_step(&db, &mut ra, 0).unwrap();
    reg.train_step(&db, &mut rb, 0).unwrap();
    let deltas: Vec<(String, Vec<f64>)> = {
        let mut r = Rng::new(3);
        reg.params().iter().filter(|p| p.name.starts_with("enc.")).map(|p| (p.name.clone(), (0..p.tensor.numel()).map(|_| 0.01 * r.normal()).collect())).collect()
    };
    let b_lead = beta.iter().cloned().fold(0.0, f64::max);
    let mut trace_ref = [0.0f64; 2];
    for ((name, ga), (_, gb)) in ra.steps[0].iter().zip(&rb.steps[0]) {
        let want: Vec<f64> = match deltas.iter().find(|(n, _)| n == name) {
            Some((_, dl)) if name.starts_with(&format!("enc.{lead}.")) => ga.iter().zip(dl).map(|(a, d)| *a as f64 + b_lead * d).collect(),
            _ => ga.iter().map(|&a| a as f64).collect(),
        };
        assert_close(name, gb, &want, 1e-3, 1e-6);
        let p = reg.params().into_iter().find(|p| &p.name == name).unwrap();
        if name.starts_with("enc.") && inforeg::traced(&p) {
            let i = if name.starts_with("enc.audio.") { 0 } else { 1 };
            trace_ref[i] += gb.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / gb.len() as f64;
        }
    }
    let st = reg.end_epoch(0, &mut rb).unwrap();
    let log = &st.extra.iter().find(|(n, _)| n == "inforeg").unwrap().1;
    assert_eq!(log["window_open"], serde_json::json!(true), "epoch 0 is inside the window");
    let got: Vec<f32> = ["audio", "visual"].iter().map(|m| log["trace"][m].as_f64().unwrap() as f32).collect();
    assert_close("traces", &got, &trace_ref, 1e-4, 1e-12);
    let got: Vec<f32> = ["audio", "visual"].iter().map(|m| log["beta"][m].as_f64().unwrap() as f32).collect();
    assert_close("logged β", &got, &beta, 1e-4, 1e-7);
}

// ---------------------------------------------------------------------------------------
// end to end
// ---------------------------------------------------------------------------------------

#[test]
fn mla_and_inforeg_train_on_synthetic_data() {
    // MLA: the official elementwise denominator of the projection update destabilises this
    // small model (docs/methods/mla.md, "Measured here"), the scalar one learns steadily
    for (name, extra) in [("mla", "method.mla.denominator=scalar"), ("inforeg", "method.inforeg.sufficient=visual")] {
        // alternating updates through a shared head learn slower per epoch than joint
        // training: more data and epochs than the PMR / MMPareto test
        let lines = train_log(&tiny(&[&format!("method.name={name}"), extra, "train.epochs=8", "data.n_train=960", "data.n_test=200"]), &format!("e2e-{name}"));
        assert_eq!(lines.len(), 8);
        let last = lines.last().unwrap();
        let acc = last["test"]["acc"].as_f64().unwrap();
        assert!(acc > 0.5, "{name}: test accuracy {acc}: {last}");
        let losses: Vec<f64> = lines.iter().map(|l| l["train"]["loss"].as_f64().unwrap()).collect();
        assert!(losses.last().unwrap() < &losses[0], "{name}: the loss must fall: {losses:?}");
        for m in ["audio", "visual"] {
            assert!(last["test"]["per_modality"][m]["acc"].as_f64().is_some(), "{name}: {m} view: {last}");
        }
        if name == "mla" {
            // 30 batches of 32 per epoch, two updates each; every update after the first is
            // projected, which shrinks the head gradient (‖P‖_F = 1)
            assert_eq!(last["mla"]["updates"], serde_json::json!(8 * 30 * 2));
            let r = last["mla"]["head_grad_ratio"]["visual"].as_f64().unwrap();
            assert!(r > 0.0 && r < 1.0, "{last}");
        } else {
            assert_eq!(lines[0]["inforeg"]["window_open"], serde_json::json!(true));
            assert_eq!(lines[0]["inforeg"]["k"]["visual"].as_f64(), Some(1.0));
            for l in &lines {
                let t = l["inforeg"]["trace"]["visual"].as_f64().unwrap();
                assert!(t > 0.0 && t.is_finite(), "{l}");
            }
        }
    }
}

#[test]
fn mla_and_inforeg_handle_three_modalities() {
    let three = "data.modalities=[{name=\"a\",shape=[1,8,8],signal=0.1},{name=\"b\",shape=[1,8,8],signal=0.6},{name=\"c\",shape=[1,8,8],signal=0.3}]";
    for (name, extra) in [("mla", "method.mla.test_fusion=entropy_batch"), ("inforeg", "method.inforeg.sufficient=b")] {
        let lines = train_log(&tiny(&[&format!("method.name={name}"), three, extra, "train.epochs=2"]), &format!("three-{name}"));
        let last = lines.last().unwrap();
        for m in ["a", "b", "c"] {
            assert!(last["test"]["per_modality"][m]["acc"].as_f64().is_some(), "{name}: {last}");
        }
        assert!(last["train"]["loss"].as_f64().unwrap().is_finite());
        if name == "mla" {
            assert_eq!(last["mla"]["updates"], serde_json::json!(2 * 5 * 3), "three updates per step");
        } else {
            // b (the strongest) leads and is the only one regulated
            let b = &lines[0]["inforeg"]["beta"];
            assert!(b["b"].as_f64().unwrap() > 0.0, "{b}");
        }
    }
}

#[test]
fn resume_after_a_kill_mla_cnn() {
    // the projection matrix (a buffer) and the update count (method state) are checkpointed;
    // batch norm exercises the running statistics of the alternating forwards
    let sets = tiny(&["method.name=mla", "model.encoder=small_cnn", "model.width=4", "model.depth=2", "train.epochs=5", "data.n_train=480"]);
    resume_through_the_cli_is_exact("mla", &sets, 5);
}

#[test]
fn resume_after_a_kill_inforeg() {
    // the trace history decides the window: the run is killed only once three epochs are
    // logged, so the resumed run's k comes from a restored history of two or more epochs
    let sets = tiny(&["method.name=inforeg", "method.inforeg.sufficient=visual", "method.inforeg.window=2", "train.epochs=6", "data.n_train=480"]);
    resume_through_the_cli_is_exact_killed_after("inforeg", &sets, 6, 3);
}

#[test]
fn mla_and_inforeg_config_errors_name_the_field() {
    let err = |s: &[&str]| config::load(None, &sets(s)).unwrap_err().to_string();
    for (set, field) in [
        ("method.mla.weights=[-1.0, 1.0]", "method.mla.weights"),
        ("method.mla.weights=[0.0, 0.0]", "method.mla.weights"),
        ("method.inforeg.window=0", "method.inforeg.window"),
        ("method.inforeg.beta_sufficient=-1", "method.inforeg.beta_sufficient"),
        ("method.inforeg.beta_other=-0.5", "method.inforeg.beta_other"),
    ] {
        let e = err(&["method.name=mla", set]);
        assert!(e.contains(field), "{set}: {e}");
    }
    for s in ["method.mla.bogus=1", "method.inforeg.bogus=1"] {
        assert!(err(&[s]).contains("bogus"));
    }
    let e = err(&["method.mla.projection=orthogonal"]);
    assert!(e.contains("replace") && e.contains("add") && e.contains("off"), "{e}");
    // errors that need the data: raised when the method is built
    let build_err = |s: &[&str]| {
        let c: Config = config::load(None, &tiny(s)).unwrap().0;
        let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        equimodal::methods::build(&gpu(), &c.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).err().expect("must fail").to_string()
    };
    let e = build_err(&["method.name=inforeg", "method.inforeg.sufficient=image"]);
    assert!(e.contains("method.inforeg.sufficient") && e.contains("visual"), "{e}");
    let e = build_err(&["method.name=mla", "model.modalities.audio.hidden=[16]"]);
    assert!(e.contains("same width") && e.contains("audio: 16"), "{e}");
    let e = build_err(&["method.name=mla", "method.mla.test_fusion=fixed", "method.mla.weights=[1.0, 2.0, 3.0]"]);
    assert!(e.contains("method.mla.weights"), "{e}");
    // the defaults are the official code's
    let c = config::load(None, &sets(&["method.name=mla"])).unwrap().0;
    let l = &c.method.mla;
    assert_eq!((l.projection, l.denominator, l.test_fusion, l.weights.len()), (MlaProjection::Replace, MlaDenominator::Outer, MlaFusion::EntropyBatch, 0));
    let i = &c.method.inforeg;
    assert_eq!((i.sufficient.as_str(), i.beta_sufficient, i.beta_other, i.threshold, i.window), ("audio", 0.95, 0.1, 0.05, 10));
}
