//! Each method's mechanism pinned with exact expected values: OGM / OGM-GE's coefficients
//! and gradients against joint training's on the same batch, AIM's dominant modality, ratios
//! and strengths on data built to make one modality dominant, AUG's check schedule, gap and
//! trainable set; and end-to-end thresholds that a broken method would miss.
use crate::common;
use common::recorder::Recorder;
use common::*;
use equimodal::config::{self, Config};
use equimodal::data::{self, HostBatch, Loader, LoaderConfig, Split};
use equimodal::methods::{self, DeviceBatch, Method};
use equimodal::optim::Optimizer;
use equimodal::train::{self, TrainOptions};
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::Arc;


fn sets(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn cfg(list: &[String]) -> Config {
    config::load(None, list).unwrap().0
}

/// The method `c` builds with seed 0, and its first training batch of 32.
fn method_and_batch(c: &Config) -> (Box<dyn Method>, DeviceBatch, HostBatch) {
    let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let m = methods::build(&gpu(), &c.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).unwrap();
    let mut lc = LoaderConfig::eval(32);
    lc.workers = 1;
    let hb = Loader::new(ds.clone(), Split::Train, lc).unwrap().next().unwrap().unwrap();
    let db = train::upload_batch(&gpu(), &hb, ds.num_classes()).unwrap();
    (m, db, hb)
}

/// Gradients of one training step, by parameter name.
fn step_grads(m: &mut dyn Method, b: &DeviceBatch, epoch: usize) -> Vec<(String, Vec<f32>)> {
    let mut rec = Recorder::default();
    rec.add_params(&m.trainable());
    m.train_step(b, &mut rec, epoch).unwrap();
    rec.steps.pop().unwrap()
}

/// Σ_i softmax(logits_i)[y_i] in f64 (OGM's confidence score).
fn score(logits: &[f32], labels: &[u32], k: usize) -> f64 {
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            let row: Vec<f64> = logits[i * k..(i + 1) * k].iter().map(|&v| v as f64).collect();
            let mx = row.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
            (row[y as usize] - mx).exp() / z
        })
        .sum()
}

/// OGM's coefficients for two modalities, written out as in the official code: the ratio of
/// the larger score to the smaller, k = 1 − tanh(α·relu(ρ)) (code) or 1 − tanh(α·relu(ρ − 1))
/// (paper) for the dominant modality, 1 for the other.
fn ogm_k(s: [f64; 2], alpha: f64, paper: bool) -> [f64; 2] {
    let rho = [s[0] / s[1], s[1] / s[0]];
    let k = |r: f64| 1.0 - (alpha * (if paper { r - 1.0 } else { r }).max(0.0)).tanh();
    if rho[0] >= 1.0 {
        [k(rho[0]), 1.0]
    } else {
        [1.0, k(rho[1])]
    }
}

const BASE: &[&str] = &["data.n_train=64", "data.n_test=32", "model.encoder=mlp", "model.hidden=[24]", "train.batch_size=32", "train.workers=1"];

/// BASE plus `extra` overrides.
fn with(extra: &[&str]) -> Vec<String> {
    sets(BASE).into_iter().chain(sets(extra)).collect()
}

#[test]
fn ogm_scales_the_dominant_encoder_gradient_by_its_coefficient() {
    for (formula, alpha) in [("code", 0.1), ("code", 0.8), ("paper", 0.8)] {
        let alpha_s = format!("method.ogm.alpha={alpha}");
        let formula_s = format!("method.ogm.formula=\"{formula}\"");
        // a joint model and an OGM model with the same weights, on the same batch
        let (mut joint, b, hb) = method_and_batch(&cfg(&with(&["method.name=joint"])));
        let (mut ogm, _, _) = method_and_batch(&cfg(&with(&["method.name=ogm", &alpha_s, &formula_s])));
        let pred = joint.predict(&b.inputs).unwrap();
        let views: Vec<Vec<f32>> = pred.per_modality.iter().map(|v| v.as_ref().unwrap().to_vec().unwrap()).collect();
        let s = [score(&views[0], &hb.labels, 10), score(&views[1], &hb.labels, 10)];
        let k = ogm_k(s, alpha, formula == "paper");
        assert!(k.iter().any(|&k| k < 1.0 - 1e-4), "{formula}: no modulation at scores {s:?}");
        let gj = step_grads(joint.as_mut(), &b, 0);
        let go = step_grads(ogm.as_mut(), &b, 0);
        assert_eq!(gj.len(), go.len(), "the same parameters get gradients");
        assert!(gj.len() > 4);
        for ((name, a), (name2, o)) in gj.iter().zip(&go) {
            assert_eq!(name, name2);
            // encoder m's gradients are k_m times joint training's; the head's are unchanged
            let km = if name.starts_with("enc.audio.") {
                k[0]
            } else if name.starts_with("enc.visual.") {
                k[1]
            } else {
                1.0
            };
            let want: Vec<f64> = a.iter().map(|&g| g as f64 * km).collect();
            assert_close(&format!("{formula} α {alpha}: {name} (k {km})"), o, &want, 1e-5, 1e-9);
        }
    }
}

#[test]
fn ogm_with_the_official_scope_modulates_conv_weights_only() {
    let cnn = ["model.encoder=small_cnn", "model.width=4", "model.depth=2"];
    let (mut joint, b, _) = method_and_batch(&cfg(&with(&[&["method.name=joint"][..], &cnn].concat())));
    let (mut ogm, _, _) = method_and_batch(&cfg(&with(&[&["method.name=ogm", "method.ogm.modulate=conv_weights"][..], &cnn].concat())));
    // (the coefficients' values are pinned above; here, which gradients they reach)
    let (gj, go) = (step_grads(joint.as_mut(), &b, 0), step_grads(ogm.as_mut(), &b, 0));
    let mut ks = Vec::new();
    for ((name, a), (_, o)) in gj.iter().zip(&go) {
        let conv = name.contains(".conv.weight");
        if !conv {
            assert_eq!(a, o, "{name}: only conv weights are modulated");
            continue;
        }
        // a single factor k per modality: o = k·a elementwise
        let i = a.iter().enumerate().max_by(|x, y| x.1.abs().total_cmp(&y.1.abs())).unwrap().0;
        let k = o[i] as f64 / a[i] as f64;
        assert_close(name, o, &a.iter().map(|&g| g as f64 * k).collect::<Vec<_>>(), 1e-5, 1e-9);
        ks.push((name.starts_with("enc.audio."), k));
    }
    assert_eq!(ks.len(), 4, "two conv layers per encoder");
    // one modality is modulated (k < 1), the other is not (k = 1)
    let modulated: Vec<bool> = ks.iter().map(|&(_, k)| k < 1.0 - 1e-6).collect();
    assert!(modulated.iter().any(|&m| m) && modulated.iter().any(|&m| !m), "{ks:?}");
    for (audio, k) in &ks {
        let same_modality: Vec<f64> = ks.iter().filter(|(a, _)| a == audio).map(|x| x.1).collect();
        assert!(same_modality.iter().all(|v| (v - k).abs() < 1e-5), "{ks:?}");
    }
}

#[test]
fn ogm_outside_its_epochs_is_joint_training() {
    let (mut joint, b, _) = method_and_batch(&cfg(&with(&["method.name=joint"])));
    let (mut ogm, _, _) = method_and_batch(&cfg(&with(&["method.name=ogm_ge", "method.ogm.start_epoch=2", "method.ogm.end_epoch=3"])));
    let gj = step_grads(joint.as_mut(), &b, 0);
    // epoch 1 is before the modulation window: no scaling and no noise
    assert_eq!(step_grads(ogm.as_mut(), &b, 1), gj);
    // epoch 2 is inside it
    assert_ne!(step_grads(ogm.as_mut(), &b, 2), gj);
}

#[test]
fn ogm_ge_adds_noise_with_the_gradient_std() {
    let (mut ogm, b, _) = method_and_batch(&cfg(&with(&["method.name=ogm", "model.hidden=[256]"])));
    let (mut ge, _, _) = method_and_batch(&cfg(&with(&["method.name=ogm_ge", "model.hidden=[256]"])));
    let (mut joint, _, _) = method_and_batch(&cfg(&with(&["method.name=joint", "model.hidden=[256]"])));
    let (go, gg, gj) = (step_grads(ogm.as_mut(), &b, 0), step_grads(ge.as_mut(), &b, 0), step_grads(joint.as_mut(), &b, 0));
    for ((name, o), ((_, g), (_, j))) in go.iter().zip(gg.iter().zip(&gj)) {
        if !name.starts_with("enc.") || o.len() < 1000 {
            continue;
        }
        // GE's gradient = OGM's + N(0, std(joint gradient)²) (torch's unbiased std)
        let n = j.len() as f64;
        let mean = j.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (j.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let z: Vec<f64> = g.iter().zip(o).map(|(&g, &o)| (g as f64 - o as f64) / std).collect();
        let zm = z.iter().sum::<f64>() / n;
        let zs = (z.iter().map(|v| (v - zm).powi(2)).sum::<f64>() / n).sqrt();
        assert!(zm.abs() < 5.0 / n.sqrt(), "{name}: noise mean {zm} (n {n})");
        assert!((zs - 1.0).abs() < 5.0 / (2.0 * n).sqrt(), "{name}: noise std {zs} of the gradient's");
    }
}

#[test]
fn ogm_settings_are_checked_naming_the_field() {
    for (set, field) in [
        ("method.ogm.alpha=-0.5", "method.ogm.alpha"),
        ("method.ogm.alpha=inf", "method.ogm.alpha"),
        ("method.ogm.alpha=nan", "method.ogm.alpha"),
        ("method.ogm.start_epoch=4", "method.ogm.start_epoch"),
    ] {
        let e = config::load(None, &with(&["method.name=ogm", "method.ogm.end_epoch=3", set])).unwrap_err().to_string();
        assert!(e.contains(field), "{set}: {e}");
    }
    // the bounds themselves are allowed: no modulation (α = 0), a window of one epoch
    config::load(None, &with(&["method.name=ogm", "method.ogm.alpha=0", "method.ogm.start_epoch=3", "method.ogm.end_epoch=3"])).unwrap();
}

#[test]
fn aug_settings_are_checked_naming_the_field() {
    let max = equimodal::limits::MAX_WIDTH;
    let too_wide = format!("method.aug.hidden={}", max + 1);
    for (set, field) in [
        ("method.aug.lambda=-0.5", "method.aug.lambda"),
        ("method.aug.lambda=inf", "method.aug.lambda"),
        ("method.aug.lambda=nan", "method.aug.lambda"),
        ("method.aug.tau=inf", "method.aug.tau"),
        ("method.aug.sigma=0", "method.aug.sigma"),
        ("method.aug.multi_threshold=0", "method.aug.multi_threshold"),
        ("method.aug.fusion_weights=[0.5,-1.0]", "method.aug.fusion_weights"),
        ("method.aug.fusion_weights=[0.5,inf]", "method.aug.fusion_weights"),
        ("method.aug.fusion_weights=[0.0,0.0]", "method.aug.fusion_weights"),
        (too_wide.as_str(), "method.aug.hidden"),
    ] {
        let e = config::load(None, &with(&["method.name=aug", set])).unwrap_err().to_string();
        assert!(e.contains(field), "{set}: {e}");
    }
    // the bounds themselves are allowed
    let widest = format!("method.aug.hidden={max}");
    for set in ["method.aug.lambda=0", "method.aug.tau=0", "method.aug.sigma=0.001", "method.aug.multi_threshold=0.001", "method.aug.fusion_weights=[0.0,1.0]", &widest] {
        config::load(None, &with(&["method.name=aug", set])).unwrap_or_else(|e| panic!("{set}: {e}"));
    }
}

#[test]
fn ogm_with_three_modalities_divides_by_the_mean_of_the_other_scores() {
    // ρ_m = s_m / mean of the other two scores; every modality with ρ_m ≥ 1 is damped
    let three = "data.modalities=[{name=\"a\",shape=[12],signal=0.8},{name=\"b\",shape=[12],signal=0.4},{name=\"c\",shape=[12],signal=0.1}]";
    let (mut joint, b, hb) = method_and_batch(&cfg(&with(&["method.name=joint", three])));
    let (mut ogm, _, _) = method_and_batch(&cfg(&with(&["method.name=ogm", three])));
    let pred = joint.predict(&b.inputs).unwrap();
    let s: Vec<f64> = pred.per_modality.iter().map(|v| score(&v.as_ref().unwrap().to_vec().unwrap(), &hb.labels, 10)).collect();
    let total: f64 = s.iter().sum();
    let k: Vec<f64> = s
        .iter()
        .map(|&sm| {
            let rho = sm / ((total - sm) / 2.0);
            if rho >= 1.0 {
                1.0 - (0.8 * rho).tanh()
            } else {
                1.0
            }
        })
        .collect();
    assert!(k.iter().any(|&k| k < 0.9), "no modulation at scores {s:?}");
    let (gj, go) = (step_grads(joint.as_mut(), &b, 0), step_grads(ogm.as_mut(), &b, 0));
    assert_eq!(gj.len(), go.len());
    for ((name, a), (_, o)) in gj.iter().zip(&go) {
        let km = ["a", "b", "c"].iter().position(|m| name.starts_with(&format!("enc.{m}."))).map_or(1.0, |i| k[i]);
        let want: Vec<f64> = a.iter().map(|&g| g as f64 * km).collect();
        assert_close(&format!("{name} (k {km}, scores {s:?})"), o, &want, 1e-5, 1e-9);
    }
}

/// OGM, OGM-GE and joint models with the same weights, with these extra settings, and the
/// first batch.
fn ogm_ge_and_joint(extra: &[&str]) -> [(Box<dyn Method>, DeviceBatch); 3] {
    ["ogm", "ogm_ge", "joint"].map(|name| {
        let (m, b, _) = method_and_batch(&cfg(&[with(extra), sets(&[&format!("method.name={name}")])].concat()));
        (m, b)
    })
}

#[test]
fn ogm_ge_noise_of_small_gradients_has_their_unbiased_std() {
    // a hidden layer of 2: bias gradients of 2 values, whose unbiased std is |g0 − g1| / √2
    let [(mut ogm, b), (mut ge, _), (mut joint, _)] = ogm_ge_and_joint(&["model.hidden=[2]"]);
    let (go, gj) = (step_grads(ogm.as_mut(), &b, 0), step_grads(joint.as_mut(), &b, 0));
    let mut z = Vec::new(); // noise / std over the 2-value gradients of every step
    let mut drawn = 0u64;
    for step in 0..150 {
        let gg = step_grads(ge.as_mut(), &b, 0);
        for ((name, o), ((_, g), (_, j))) in go.iter().zip(gg.iter().zip(&gj)) {
            if !name.starts_with("enc.") {
                assert_eq!(o, g, "{name}: the head gets no noise");
                continue;
            }
            drawn += o.len() as u64;
            if o.len() == 2 {
                // the noise's std is that of the unmodulated (joint training's) gradient
                let std = (j[0] as f64 - j[1] as f64).abs() / 2f64.sqrt();
                if std > 1e-5 {
                    z.extend(o.iter().zip(g).map(|(&o, &g)| (g as f64 - o as f64) / std));
                }
            }
        }
        // the noise stream advances by one draw per noised value: no draw is used twice
        assert_eq!(ge.state()["noise_offset"], drawn, "step {step}");
    }
    let n = z.len() as f64;
    assert!(n >= 300.0, "{n} noised values of 2-value gradients");
    let rms = (z.iter().map(|v| v * v).sum::<f64>() / n).sqrt();
    // the biased std (÷ n) or ÷ (n + 1) would give 0.71 or 0.58
    assert!((rms - 1.0).abs() < 5.0 / (2.0 * n).sqrt(), "noise / unbiased std: rms {rms} over {n} values");
}

#[test]
fn ogm_ge_leaves_single_value_gradients_without_noise() {
    // a hidden layer of 1: its bias gradient is a single value, whose std is undefined
    let [(mut ogm, b), (mut ge, _), _] = ogm_ge_and_joint(&["model.hidden=[1]"]);
    let (go, gg) = (step_grads(ogm.as_mut(), &b, 0), step_grads(ge.as_mut(), &b, 0));
    let mut drawn = 0;
    for ((name, o), (_, g)) in go.iter().zip(&gg) {
        if name.starts_with("enc.") && o.len() == 1 {
            assert_eq!(o, g, "{name}: OGM-GE's gradient is OGM's");
        } else if name.starts_with("enc.") {
            assert_ne!(o, g, "{name}: noised");
            drawn += o.len() as u64;
        }
    }
    assert!(go.iter().any(|(n, o)| n.starts_with("enc.") && o.len() == 1));
    assert_eq!(ge.state()["noise_offset"], drawn);
}

fn train_log(list: &[String], dir: &Path) -> Vec<serde_json::Value> {
    let (c, text) = config::load(None, list).unwrap();
    let mut o = TrainOptions::new(dir);
    o.progress = false;
    train::train(&gpu(), &c, &text, &o).unwrap();
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    log.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("equimodal-methods-{name}-{}", std::process::id()))
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn aim_finds_the_dominant_modality_and_derives_its_strengths() {
    // one modality carries the label and the other almost nothing: AIM must name the
    // informative one dominant, whichever it is, and damp it
    for (signal, dominant, weak) in [("[0.05,0.8]", "visual", "audio"), ("[0.8,0.05]", "audio", "visual")] {
        let lines = train_log(
            &with(&[
                "method.name=aim",
                "model.hidden=[32,32]",
                "data.n_train=320",
                "train.epochs=3",
                "train.lr=0.05",
                "method.aim.beta=5.0",
                &format!("data.signal={signal}"),
            ]),
            &tmp(&format!("aim-dom-{dominant}")),
        );
        for (e, l) in lines.iter().enumerate() {
            let a = &l["aim"];
            assert_eq!(a["dominant"], dominant, "epoch {e}: {a}");
            assert_eq!(a["weak"], weak, "epoch {e}: {a}");
            // ratios and strengths recomputed from the same line: r_d = S_dom[d] / S_weak[d]
            // (equal depths here), s_d = clamp(tanh(β(r_d − 1)), 0, s_max)
            let (sd, sw) = (f64s(&a["scores"][dominant]), f64s(&a["scores"][weak]));
            let (r, s) = (f64s(&a["ratio"]), f64s(&a["strength"]));
            assert_eq!((r.len(), s.len()), (2, 2));
            for d in 0..2 {
                assert!((r[d] - sd[d] / sw[d]).abs() < 1e-6 * r[d], "epoch {e} depth {d}: ratio {} vs {}", r[d], sd[d] / sw[d]);
                let want = (5.0 * (r[d] - 1.0)).tanh().clamp(0.0, 0.9);
                assert!((s[d] - want).abs() < 1e-5, "epoch {e} depth {d}: strength {} vs {want}", s[d]);
            }
            assert!(s.iter().any(|&v| v > 0.05), "epoch {e}: the dominant modality is damped: {s:?}");
            // from the second epoch on the auxiliary block is damped: its loss differs
            if e > 0 {
                assert_ne!(a["aux_loss"], a["main_loss"], "epoch {e}: {a}");
            }
        }
    }
}

/// The depth of an encoder with `to` depths that depth `d` of one with `from` depths maps to:
/// proportional, rounded to the nearest (written out independently of src/methods/aim.rs).
fn mapped_depth(d: usize, from: usize, to: usize) -> usize {
    if from == 1 {
        return to - 1;
    }
    let x = d as f64 * (to - 1) as f64 / (from - 1) as f64;
    (x + 0.5).floor() as usize
}

#[test]
fn aim_v3_compares_depths_of_encoders_of_different_depth() {
    // audio (weak) against visual (dominant, 2 depths). With 4 audio depths each dominant
    // depth is compared with the proportional weak depth (0 -> 0, 1 -> 3) and, with v3, each
    // weak depth with the proportional dominant one (0, 1 -> 0; 2, 3 -> 1: rounded, not
    // floored); with 1 audio depth, the dominant depths both meet it and it meets the
    // dominant encoder's last depth
    assert_eq!((0..4).map(|d| mapped_depth(d, 4, 2)).collect::<Vec<_>>(), [0, 0, 1, 1]);
    for audio in ["[32,32,32,32]", "[32]"] {
        let dw = audio.matches("32").count();
        let lines = train_log(
            &with(&[
                "method.name=aim",
                "method.aim.v3=true",
                "method.aim.beta=5.0",
                "model.hidden=[32,32]",
                &format!("model.modalities.audio.hidden={audio}"),
                "data.n_train=320",
                "data.signal=[0.05,0.8]",
                "train.epochs=3",
                "train.lr=0.05",
            ]),
            &tmp(&format!("aim-v3-depths-{dw}")),
        );
        let strength = |r: f64| (5.0 * (r - 1.0)).tanh().clamp(0.0, 0.9);
        for (e, l) in lines.iter().enumerate() {
            let a = &l["aim"];
            assert_eq!((a["dominant"].as_str(), a["weak"].as_str()), (Some("visual"), Some("audio")), "epoch {e}: {a}");
            assert_eq!(a["depths"], 2, "epoch {e}: the dominant encoder's depths");
            let (sd, sw) = (f64s(&a["scores"]["visual"]), f64s(&a["scores"]["audio"]));
            assert_eq!((sd.len(), sw.len()), (2, dw));
            let (r, s) = (f64s(&a["ratio"]), f64s(&a["strength"]));
            let (rw, sv) = (f64s(&a["ratio_weak"]), f64s(&a["strength_weak"]));
            assert_eq!((r.len(), s.len(), rw.len(), sv.len()), (2, 2, dw, dw), "epoch {e}: {a}");
            for d in 0..2 {
                let want = sd[d] / sw[mapped_depth(d, 2, dw)];
                assert!((r[d] - want).abs() < 1e-6 * want, "epoch {e} depth {d}: ratio {} vs {want}", r[d]);
                assert!((s[d] - strength(r[d])).abs() < 1e-5, "epoch {e} depth {d}: strength {}", s[d]);
            }
            for d in 0..dw {
                let want = sw[d] / sd[mapped_depth(d, dw, 2)];
                assert!((rw[d] - want).abs() < 1e-6 * want, "epoch {e} weak depth {d}: ratio {} vs {want}", rw[d]);
                assert!((sv[d] - strength(rw[d])).abs() < 1e-5, "epoch {e} weak depth {d}: strength {}", sv[d]);
            }
            // an auxiliary block is damped exactly where a strength is positive (every layer has
            // a mask from the first epoch on)
            assert_eq!(a["damped"]["dominant"], s.iter().any(|&v| v > 0.0), "epoch {e}: {a}");
            assert_eq!(a["damped"]["weak"], sv.iter().any(|&v| v > 0.0), "epoch {e}: {a}");
        }
        // before the first measurement both auxiliary blocks are the full encoders: the
        // auxiliary term is the main CE twice (doubling is exact in floating point)
        let a0 = &lines[0]["aim"];
        assert_eq!(a0["aux_loss"].as_f64().unwrap(), 2.0 * a0["main_loss"].as_f64().unwrap(), "{a0}");
    }
}

/// A restored AIM state names its dominant and weak modalities by index: each index of a
/// modality the model has comes back as it was, one it does not have (a state from a model
/// with more modalities, or a damaged one) is dropped (no dominant; weak 0), and the model
/// still trains.
#[test]
fn aim_restore_keeps_valid_modalities_and_drops_others() {
    let c = cfg(&with(&["method.name=aim", "model.hidden=[32,32]"]));
    let restored = |dominant: u64, weak: u64| {
        let (mut m, b, _) = method_and_batch(&c);
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        let state = serde_json::json!({"proto_ready": true, "dominant": dominant, "weak": weak, "strength": [0.0, 0.0], "ratio": [1.0, 1.0]});
        m.restore(&state, opt.as_mut()).unwrap();
        let got = m.state();
        m.train_step(&b, opt.as_mut(), 0).unwrap();
        (got["dominant"].as_u64(), got["weak"].as_u64())
    };
    assert_eq!(restored(1, 0), (Some(1), Some(0)));
    assert_eq!(restored(0, 1), (Some(0), Some(1)));
    // two modalities: index 2 is none of them
    assert_eq!(restored(2, 2), (None, Some(0)));
}

#[test]
fn aim_v3_damps_the_weak_block_by_its_strengths() {
    // the same model and batch, restored with the weak modality's strengths positive or zero
    // (the dominant one's zero): one step then trains the weak encoder differently exactly
    // when v3 damps its auxiliary block
    let step = |v3: bool, weak_strength: f64| -> Vec<(String, Vec<f32>)> {
        let c = cfg(&with(&["method.name=aim", "model.hidden=[32,32]", &format!("method.aim.v3={v3}")]));
        let (mut m, b, _) = method_and_batch(&c);
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        let state = serde_json::json!({
            "proto_ready": false, "dominant": 1, "weak": 0, "strength": [0.0, 0.0],
            "strength_weak": [weak_strength, weak_strength], "ratio": [1.0, 1.0], "ratio_weak": [1.0, 1.0],
        });
        m.restore(&state, opt.as_mut()).unwrap();
        m.train_step(&b, opt.as_mut(), 0).unwrap();
        m.params().iter().filter(|p| p.name.starts_with("enc.audio.")).map(|p| (p.name.clone(), p.tensor.to_vec().unwrap())).collect()
    };
    assert_ne!(step(true, 0.9), step(true, 0.0), "v3: a damped weak block changes the weak encoder's step");
    assert_eq!(step(false, 0.9), step(false, 0.0), "without v3 the weak strengths are not used");
}

#[test]
fn aim_epoch_statistics_are_per_sample_means_and_scores_an_ema() {
    // the same batch with weights that do not move (learning rate 0): one step with score
    // momentum 0, two steps with momentum 0.9. Losses per sample are equal; the moving
    // average of a constant per-depth score is that score
    let run_with = |momentum: f32, steps: usize, gamma: f32| {
        let c = cfg(&with(&["method.name=aim", "model.hidden=[32,32]", &format!("method.aim.score_momentum={momentum}"), &format!("method.aim.gamma={gamma}")]));
        let (mut m, b, _) = method_and_batch(&c);
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        opt.set_lr(0.0);
        for _ in 0..steps {
            m.train_step(&b, opt.as_mut(), 0).unwrap();
        }
        m.end_epoch(0, opt.as_mut()).unwrap()
    };
    let run = |momentum: f32, steps: usize| run_with(momentum, steps, 1.0);
    let (one, two) = (run(0.0, 1), run(0.9, 2));
    assert_eq!((one.samples, two.samples), (32, 64));
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * a.abs().max(b.abs());
    assert!(one.loss > 0.5 && one.loss < 10.0 && close(one.loss, two.loss), "loss per sample {} then {}", one.loss, two.loss);
    let section = |s: &equimodal::methods::EpochStats| s.extra.iter().find(|(k, _)| k == "aim").unwrap().1.clone();
    let (a1, a2) = (section(&one), section(&two));
    for m in ["audio", "visual"] {
        let (s1, s2) = (f64s(&a1["scores"][m]), f64s(&a2["scores"][m]));
        assert!(s1.iter().zip(&s2).all(|(x, y)| close(*x, *y)), "{m}: per-depth scores {s1:?} vs {s2:?}");
    }
    // γ = 0: no auxiliary term is computed at all (its logged loss is 0, not the main CE)
    assert!(a1["aux_loss"].as_f64().unwrap() > 0.5, "γ = 1: {a1}");
    let g0 = section(&run_with(0.0, 1, 0.0));
    assert_eq!(g0["aux_loss"].as_f64(), Some(0.0), "γ = 0: {g0}");
    // three modalities (where the sums' layout is not symmetric in M): with γ = 0 the
    // objective is the main CE, so the two logged means agree
    let three = "data.modalities=[{name=\"a\",shape=[12],signal=0.8},{name=\"b\",shape=[12],signal=0.4},{name=\"c\",shape=[12],signal=0.1}]";
    let c = cfg(&with(&["method.name=aim", "method.aim.gamma=0", three]));
    let (mut m, b, _) = method_and_batch(&c);
    let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
    m.train_step(&b, opt.as_mut(), 0).unwrap();
    let st = m.end_epoch(0, opt.as_mut()).unwrap();
    let a3 = section(&st);
    assert!(close(a3["main_loss"].as_f64().unwrap(), st.loss), "three modalities: main CE {} vs objective {}", a3["main_loss"], st.loss);
    assert_eq!(a3["aux_loss"].as_f64(), Some(0.0), "three modalities, γ = 0: {a3}");
}

/// The loss composition at epoch 0 (no strengths measured yet, so the auxiliary block is the
/// full encoder): one SGD step (no momentum history, no weight decay) moves every parameter
/// by (1 + γ) times joint training's step from the same weights; with `aux_trains_head =
/// false` the head moves by joint's step alone and the encoders by (1 + γ) times it; with v3,
/// (1 + 2γ). A γ read as 1, a term dropped or counted twice, or a head that the frozen copy
/// lets through fails.
#[test]
fn aim_step_at_epoch_0_is_one_plus_gamma_joint_steps() {
    let base = ["model.hidden=[32,32]", "train.weight_decay=0", "train.lr=0.1"];
    let step = |name: &str, extra: &[&str], from: Option<&[(String, Vec<f32>)]>| -> (Vec<(String, Vec<f32>)>, Vec<(String, Vec<f32>)>) {
        let mut list = vec![format!("method.name={name}")];
        list.extend(base.iter().chain(extra).map(|s| s.to_string()));
        let c = cfg(&with(&list.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        let (mut m, b, _) = method_and_batch(&c);
        if let Some(from) = from {
            for p in m.params() {
                if let Some((_, v)) = from.iter().find(|(n, _)| *n == p.name) {
                    p.tensor.write(v).unwrap();
                }
            }
        }
        let before: Vec<(String, Vec<f32>)> = m.params().iter().map(|p| (p.name.clone(), p.tensor.to_vec().unwrap())).collect();
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        m.train_step(&b, opt.as_mut(), 0).unwrap();
        let after: Vec<(String, Vec<f32>)> = m.params().iter().map(|p| (p.name.clone(), p.tensor.to_vec().unwrap())).collect();
        let delta = before.iter().zip(&after).map(|((n, a), (_, b))| (n.clone(), b.iter().zip(a).map(|(x, y)| x - y).collect())).collect();
        (before, delta)
    };
    let (init, joint) = step("joint", &[], None);
    for (extra, enc_k, head_k) in [
        (vec!["method.aim.gamma=0.5"], 1.5, 1.5),
        (vec!["method.aim.gamma=0.5", "method.aim.aux_trains_head=false"], 1.5, 1.0),
        (vec!["method.aim.gamma=0.25", "method.aim.v3=true"], 1.5, 1.5),
    ] {
        let (_, aim) = step("aim", &extra, Some(&init));
        let mut compared = 0;
        for (name, d) in &aim {
            let Some((_, j)) = joint.iter().find(|(n, _)| n == name) else { continue };
            let k = if name.starts_with("enc.") { enc_k } else { head_k };
            let want: Vec<f64> = j.iter().map(|v| k * *v as f64).collect();
            let peak = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert_close(&format!("{extra:?}: {name}"), d, &want, 1e-3, 1e-4 * peak);
            compared += 1;
        }
        assert!(compared >= 6, "{extra:?}: only {compared} parameters in common with joint training");
    }
}

#[test]
fn aim_prototypes_start_from_their_own_draws() {
    // with no fitting steps the prototypes stay as drawn: each (modality, depth) from its own
    // random stream (not one draw scaled per depth), each run seed its own
    let protos = |seed: u64| -> Vec<(String, Vec<f32>)> {
        let c = cfg(&with(&["method.name=aim", "model.hidden=[32,32]", "method.aim.prototype_steps=0", &format!("seed={seed}")]));
        let (mut m, b, _) = method_and_batch(&c);
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        m.train_step(&b, opt.as_mut(), 0).unwrap();
        let mut v: Vec<(String, Vec<f32>)> =
            m.buffers().into_iter().filter(|(n, _)| n.starts_with("aim.proto.")).map(|(n, t)| (n, t.to_vec().unwrap())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    };
    let p0 = protos(0);
    let names: Vec<&str> = p0.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["aim.proto.audio.0", "aim.proto.audio.1", "aim.proto.visual.0", "aim.proto.visual.1"]);
    for (n, v) in &p0 {
        // 10 classes x 32 features, drawn (not the zeros they are built with)
        assert_eq!(v.len(), 320, "{n}");
        assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|x| *x != 0.0), "{n}");
    }
    // independent draws of 320 normals: |cos| ~ 0.06; one draw rescaled: cos = 1
    for i in 0..p0.len() {
        for j in i + 1..p0.len() {
            assert!(cos(&p0[i].1, &p0[j].1).abs() < 0.5, "{} and {} are one draw", p0[i].0, p0[j].0);
        }
    }
    for (a, b) in protos(1).iter().zip(&p0) {
        assert!(cos(&a.1, &b.1).abs() < 0.5, "{}: seed 1 drew seed 0's prototypes", a.0);
    }
}

#[test]
fn aim_refreshes_masks_and_prototypes_on_their_schedules() {
    let lines = train_log(
        &with(&["method.name=aim", "model.hidden=[32,32]", "method.aim.mask_every=3", "method.aim.prototype_every=4", "train.epochs=5"]),
        &tmp("aim-schedules"),
    );
    // periods 3 and 4 (not 2: e + 1 and e − 1 have the same parity, so a schedule counted
    // from the wrong end would pass with period 2)
    // masks: at the end of epoch 2 ((e + 1) divisible by 3), and at epoch 0 because none
    // exist yet
    let refreshed: Vec<bool> = lines.iter().map(|l| l["aim"]["masks_refreshed"].as_bool().unwrap()).collect();
    assert_eq!(refreshed, [true, false, true, false, false]);
    // prototypes: fitted before the first step, refreshed at the end of epoch 3 only; the
    // logged DAP cross-entropy is the latest refresh's, so it changes exactly there
    let ce: Vec<String> = lines.iter().map(|l| l["aim"]["prototype_ce"].to_string()).collect();
    assert_eq!(ce[0], ce[1]);
    assert_eq!(ce[1], ce[2]);
    assert_ne!(ce[2], ce[3], "refreshed at the end of epoch 3");
    assert_eq!(ce[3], ce[4]);
    for l in &lines {
        let a = &l["aim"];
        assert!(a.get("ratio_weak").is_none() && a.get("strength_weak").is_none(), "v3 keys without v3: {a}");
        // one auxiliary term without v3: at epoch 0 it is the main CE itself
        if l["epoch"] == 0 {
            assert_eq!(a["aux_loss"], a["main_loss"], "{a}");
        }
    }
}

#[test]
fn aug_checks_on_schedule_and_logs_its_gap() {
    let lines = train_log(
        &with(&["method.name=aug", "method.aug.hidden=16", "method.aug.check_every=2", "method.aug.tau=0.0", "train.epochs=6"]),
        &tmp("aug-schedule"),
    );
    // checks after epoch 0 (check_after_first), then every 2 epochs, never after the last
    let checked: Vec<usize> = (0..lines.len()).filter(|&e| !lines[e]["aug"]["check"].is_null()).collect();
    assert_eq!(checked, vec![0, 1, 3]);
    // other periods: every 3 epochs (not after the last); without the check after the first;
    // and the official default, check_every = 0: every epochs / 10 (30 epochs: every 3)
    let checks = |extra: &[&str], tag: &str| -> Vec<usize> {
        let mut list = vec!["method.name=aug", "method.aug.hidden=16", "method.aug.tau=0.0", "data.n_train=32", "data.n_test=8"];
        list.extend_from_slice(extra);
        let lines = train_log(&with(&list), &tmp(tag));
        (0..lines.len()).filter(|&e| !lines[e]["aug"]["check"].is_null()).collect()
    };
    assert_eq!(checks(&["method.aug.check_every=3", "train.epochs=7"], "aug-every3"), [0, 2, 5]);
    assert_eq!(checks(&["method.aug.check_every=3", "method.aug.check_after_first=false", "train.epochs=7"], "aug-every3-nofirst"), [2, 5]);
    assert_eq!(checks(&["train.epochs=30"], "aug-every-default"), [0, 2, 5, 8, 11, 14, 17, 20, 23, 26]);
    for l in &lines {
        // G = L_strong − L_weak, strong / weak by confidence score
        let sc = &l["imbalance"]["scores"];
        let (a, v) = (sc["audio"].as_f64().unwrap(), sc["visual"].as_f64().unwrap());
        let (strong, weak) = if a >= v { ("audio", "visual") } else { ("visual", "audio") };
        let pl = &l["train"]["per_modality_loss"];
        let want = pl[strong].as_f64().unwrap() - pl[weak].as_f64().unwrap();
        assert!((l["aug"]["gap"].as_f64().unwrap() - want).abs() < 1e-9, "{l}");
        // per-sample means: a confidence score is a probability, a loss per sample is far
        // below the sum over the epoch's 64 samples
        assert!((0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&v), "scores {sc}");
        // the scores a check decides on are those per-sample means
        if !l["aug"]["check"].is_null() {
            let cs = &l["aug"]["check"]["scores"];
            for (m, want) in [("audio", a), ("visual", v)] {
                assert!((cs[m].as_f64().unwrap() - want).abs() < 1e-9, "check scores {cs} vs {sc}");
            }
        }
        assert!(pl[strong].as_f64().unwrap() < 10.0 && pl[weak].as_f64().unwrap() < 10.0, "losses {pl}");
    }
}

#[test]
fn aug_epoch_statistics_are_per_sample_means() {
    // one epoch of one batch, then one of the same batch twice, with an optimizer that
    // changes nothing: the per-sample losses are the same, the score sums double
    let c = cfg(&with(&["method.name=aug", "method.aug.hidden=16", "train.epochs=10"]));
    let (mut m, b, _) = method_and_batch(&c);
    let mut rec = Recorder::default();
    rec.add_params(&m.trainable());
    m.train_step(&b, &mut rec, 0).unwrap();
    let one = m.end_epoch(0, &mut rec).unwrap();
    m.train_step(&b, &mut rec, 1).unwrap();
    m.train_step(&b, &mut rec, 1).unwrap();
    let two = m.end_epoch(1, &mut rec).unwrap();
    assert_eq!((one.samples, two.samples), (32, 64));
    for i in 0..2 {
        let (l1, l2) = (one.modality_loss[i], two.modality_loss[i]);
        assert!(l1 > 0.5 && l1 < 10.0 && (l1 - l2).abs() < 1e-5 * l1, "modality {i}: loss per sample {l1} then {l2}");
        assert!((two.scores[i] - 2.0 * one.scores[i]).abs() < 1e-4 * one.scores[i], "modality {i}: score sums {} then {}", one.scores[i], two.scores[i]);
    }
    assert!((one.loss - one.modality_loss.iter().sum::<f64>()).abs() < 1e-12, "the objective is the two modalities' losses");
}

#[test]
fn aug_learners_start_from_their_own_weights() {
    // the learners a check adds (what `restore` re-adds on resume) are drawn from a stream of
    // (run seed, modality, index) alone: the same in every build of the run, different for
    // every modality, index and run seed (a stream shared by two learners would start them
    // as copies of each other, which boosting cannot tell apart)
    let added = |seed: u64| -> Vec<(String, Vec<f32>)> {
        let c = cfg(&with(&["method.name=aug", "method.aug.hidden=16", &format!("seed={seed}")]));
        let (mut m, _, _) = method_and_batch(&c);
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        m.restore(&serde_json::json!({"learners": [3, 3]}), opt.as_mut()).unwrap();
        let mut w: Vec<(String, Vec<f32>)> = m
            .params()
            .iter()
            .filter(|p| p.name.starts_with("aug.learner.") && p.name.ends_with(".weight") && !p.name.ends_with(".0.weight"))
            .map(|p| (p.name.clone(), p.tensor.to_vec().unwrap()))
            .collect();
        w.sort_by(|a, b| a.0.cmp(&b.0));
        w
    };
    let s0 = added(0);
    let names: Vec<&str> = s0.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["aug.learner.audio.1.weight", "aug.learner.audio.2.weight", "aug.learner.visual.1.weight", "aug.learner.visual.2.weight"]);
    // same shapes for both modalities (model.hidden=[24]): a shared stream would show
    assert!(s0.iter().all(|p| p.1.len() == 24 * 16));
    for i in 0..s0.len() {
        for j in i + 1..s0.len() {
            assert_ne!(s0[i].1, s0[j].1, "{} and {} start from the same weights", s0[i].0, s0[j].0);
        }
    }
    assert_eq!(added(0), s0, "the same run seed adds the same learners");
    // a damaged checkpoint asking for more learners than the checks could add is refused,
    // not allocated: 6 epochs check after epochs 0 to 4 (never after the last), so at most
    // 1 + 5 learners per modality; 100 epochs with the official period (10) check after
    // epochs 0, 9, 19, ..., 89: at most 11
    let c = cfg(&with(&["method.name=aug", "method.aug.hidden=16", "train.epochs=6", "method.aug.check_every=1"]));
    let (mut m, _, _) = method_and_batch(&c);
    let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
    for bad in [serde_json::json!([1, 1_000_000_000u64]), serde_json::json!([7, 1]), serde_json::json!(["3", 1])] {
        let e = m.restore(&serde_json::json!({ "learners": bad }), opt.as_mut()).unwrap_err().to_string();
        assert!(e.contains("method_state.learners") && e.contains("at most 6"), "{e}");
    }
    m.restore(&serde_json::json!({"learners": [6, 6]}), opt.as_mut()).unwrap();
    assert_eq!(m.state()["learners"], serde_json::json!([6, 6]));
    let c = cfg(&with(&["method.name=aug", "method.aug.hidden=16", "train.epochs=100"]));
    let (mut m, _, _) = method_and_batch(&c);
    let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
    let e = m.restore(&serde_json::json!({"learners": [12, 1]}), opt.as_mut()).unwrap_err().to_string();
    assert!(e.contains("at most 11"), "{e}");
    // seeds 1 and 2 differ from 0 in one bit each (a seed or-ed / and-ed with a tag instead
    // of hashed would map them onto seed 0's stream)
    for seed in [1, 2] {
        for (a, b) in added(seed).iter().zip(&s0) {
            assert_ne!(a.1, b.1, "seed {seed}: {} equals seed 0's", a.0);
        }
    }
}

#[test]
fn aug_new_learners_train_or_stay_frozen_as_configured() {
    // train_new_learners = true joins an added learner to the optimizer; false is the
    // official code's behaviour (its optimizer is built before any learner is added, so the
    // added ones stay the random projections they were born as; the first learner and the
    // shared head train either way)
    for train_new in [true, false] {
        let c = cfg(&with(&["method.name=aug", "method.aug.hidden=16", &format!("method.aug.train_new_learners={train_new}")]));
        let (mut m, b, _) = method_and_batch(&c);
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        m.restore(&serde_json::json!({"learners": [2, 2]}), opt.as_mut()).unwrap();
        let snap = |m: &dyn Method| -> std::collections::HashMap<String, Vec<f32>> { m.params().iter().map(|p| (p.name.clone(), p.tensor.to_vec().unwrap())).collect() };
        let before = snap(m.as_ref());
        m.train_step(&b, opt.as_mut(), 0).unwrap();
        let after = snap(m.as_ref());
        for name in ["aug.learner.audio.1.weight", "aug.learner.visual.1.weight"] {
            assert_eq!(after[name] != before[name], train_new, "{name} with train_new_learners = {train_new}");
        }
        for name in ["aug.learner.audio.0.weight", "aug.learner.visual.0.weight"] {
            assert_ne!(after[name], before[name], "{name} trains either way");
        }
        assert!(after.keys().any(|n| n.starts_with("aug.head") && after[n] != before[n]), "the shared head trains either way");
    }
}

#[test]
fn every_method_updates_all_of_its_parameters() {
    // one real optimizer step moves every trainable parameter (a method that handed the
    // optimizer nothing, or dropped an encoder's gradients, would leave some where they were)
    // greedy needs convolutional encoders (its MMTMs act between their depths)
    let cnn = ["model.encoder=small_cnn", "model.width=3", "model.depth=2"];
    for name in ["joint", "ogm", "ogm_ge", "aug", "aim", "pmr", "mmpareto", "agm", "g_blending", "greedy"] {
        let mut list = vec![format!("method.name={name}"), "method.aug.hidden=16".to_string()];
        if name == "greedy" {
            list.extend(cnn.iter().map(|s| s.to_string()));
        }
        let c = cfg(&with(&list.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        let (mut m, b, _) = method_and_batch(&c);
        let before: Vec<(String, Vec<f32>)> = m.params().iter().map(|p| (p.name.clone(), p.tensor.to_vec().unwrap())).collect();
        for part in ["enc.audio.", "enc.visual.", ""] {
            let n = before.iter().filter(|(n, _)| if part.is_empty() { !n.starts_with("enc.") } else { n.starts_with(part) }).count();
            assert!(n >= 2, "{name}: {n} parameters of `{part}` (empty: the head) in {:?}", before.iter().map(|p| &p.0).collect::<Vec<_>>());
        }
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        m.train_step(&b, opt.as_mut(), 0).unwrap();
        let names: Vec<String> = opt.params().iter().map(|p| p.name.clone()).collect();
        for (n, v) in &before {
            assert!(names.contains(n), "{name}: {n} is not trained");
            let now = m.params().into_iter().find(|p| &p.name == n).unwrap().tensor.to_vec().unwrap();
            assert_ne!(&now, v, "{name}: {n} did not move");
        }
    }
}

#[test]
fn fused_models_beat_their_best_single_modality() {
    // both modalities informative, neither enough alone: a fused model that ignores one
    // (a dead branch, a method that silences a modality) falls to the single-modality level.
    // Measured (lavapipe): audio alone 52.2 %, visual alone 73.5 %; joint 83.0, OGM-GE 77.2,
    // AUG 88.8, AIM 88.0, PMR 86.8, MMPareto 90.0; 400 test samples, so a 2-point margin is ~1 standard error.
    let run = |extra: &[&str], tag: &str| {
        let list = sets(&[
            "data.n_train=600",
            "data.n_test=400",
            "data.signal=[0.5,0.5]",
            "model.encoder=mlp",
            "model.hidden=[64]",
            "method.aug.hidden=64",
            "train.batch_size=32",
            "train.workers=1",
            "train.epochs=6",
            "train.checkpoint=false",
        ]);
        let mut list = list;
        list.extend(sets(extra));
        let l = train_log(&list, &tmp(tag)).pop().unwrap();
        l["test"].clone()
    };
    let audio = run(&["method.name=unimodal", "method.modality=audio"], "uni-a")["acc"].as_f64().unwrap();
    let visual = run(&["method.name=unimodal", "method.modality=visual"], "uni-v")["acc"].as_f64().unwrap();
    let best = audio.max(visual);
    let mut weak_view = std::collections::HashMap::new();
    for name in ["joint", "ogm_ge", "aug", "aim", "pmr", "mmpareto"] {
        let t = run(&[&format!("method.name={name}")], name);
        let fused = t["acc"].as_f64().unwrap();
        assert!(fused > best + 0.02, "{name}: fused {fused} vs best single modality {best}");
        for m in ["audio", "visual"] {
            let v = t["per_modality"][m]["acc"].as_f64().unwrap();
            assert!(v > 0.25, "{name}: {m}'s own view {v} is near chance (0.1)");
        }
        weak_view.insert(name, t["per_modality"]["audio"]["acc"].as_f64().unwrap());
    }
    // the balancing methods lift the weak modality's own view above joint training's
    for name in ["aug", "aim"] {
        assert!(weak_view[name] > weak_view["joint"] + 0.02, "{name}: audio view {} vs joint {}", weak_view[name], weak_view["joint"]);
    }
}

#[test]
fn linear_probe_fits_informative_features_and_not_noise() {
    use equimodal::train::probe::{fit_and_predict, ProbeConfig};
    let g = gpu();
    let mut rng = Rng::new(91);
    let (n, d, k) = (300usize, 12usize, 4usize);
    // class c sits at 3·e_c (plus unit noise): separable by a linear map
    let make = |rng: &mut Rng, informative: bool| {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let c = i % k;
            for j in 0..d {
                let centre = if informative && j == c { 3.0 } else { 0.0 };
                x.push((centre + rng.normal()) as f32);
            }
            y.push(c as u32);
        }
        (x, y)
    };
    let acc = |logits: &[f32], y: &[u32]| equimodal::train::metrics::evaluate_logits(logits, y, k).acc;
    let (x, y) = make(&mut rng, true);
    let (xt, yt) = make(&mut rng, true);
    let a = acc(&fit_and_predict(&g, &x, &y, &xt, d, k, &ProbeConfig::default()).unwrap(), &yt);
    // Bayes accuracy here is about 0.93 (centres 3·sqrt(2) apart, unit noise)
    assert!(a > 0.85, "probe on separable features: {a}");
    let (x, y) = make(&mut rng, false);
    let (xt, yt) = make(&mut rng, false);
    let a = acc(&fit_and_predict(&g, &x, &y, &xt, d, k, &ProbeConfig::default()).unwrap(), &yt);
    assert!(a < 0.4, "probe on pure noise must stay near chance (0.25): {a}");
    let e = fit_and_predict(&g, &x[..10], &y, &xt, d, k, &ProbeConfig::default()).unwrap_err().to_string();
    assert!(e.contains("linear_probe"), "{e}");
}

#[test]
fn every_method_exposes_its_batch_norm_statistics() {
    // the running statistics of every encoder's batch norm are buffers: checkpoints save
    // them, evaluation uses them (a method that listed none would resume and evaluate with
    // fresh statistics)
    let cnn = ["model.encoder=small_cnn", "model.width=3", "model.depth=2", "method.aug.hidden=16"];
    for name in ["joint", "ogm_ge", "aug", "aim", "pmr", "mmpareto", "agm", "g_blending", "mla", "inforeg", "relearn", "reconboost", "greedy"] {
        let mut list = vec![format!("method.name={name}")];
        list.extend(cnn.iter().map(|s| s.to_string()));
        let (m, _, _) = method_and_batch(&cfg(&with(&list.iter().map(|s| s.as_str()).collect::<Vec<_>>())));
        let names: Vec<String> = m.buffers().into_iter().map(|(n, _)| n).collect();
        for enc in ["enc.audio.", "enc.visual."] {
            for stat in ["running_mean", "running_var"] {
                assert!(names.iter().any(|n| n.starts_with(enc) && n.ends_with(stat)), "{name}: no {enc}*{stat} in {names:?}");
            }
        }
    }
}

#[test]
fn every_method_exposes_its_encoder_features_for_the_probe() {
    for (name, extra) in [
        ("joint", vec![]),
        ("ogm_ge", vec![]),
        ("aug", vec!["method.aug.hidden=16"]),
        ("aim", vec![]),
        ("pmr", vec![]),
        ("mmpareto", vec![]),
        ("agm", vec![]),
        ("g_blending", vec![]),
        ("unimodal", vec!["method.modality=visual"]),
        // small CNN of widths 12, 24: features [N, 24] like the MLPs'
        ("greedy", vec!["model.encoder=small_cnn", "model.width=12", "model.depth=2"]),
    ] {
        let mut list = vec![format!("method.name={name}")];
        list.extend(extra.iter().map(|s| s.to_string()));
        let (m, b, _) = method_and_batch(&cfg(&with(&list.iter().map(|s| s.as_str()).collect::<Vec<_>>())));
        let f = m.features(&b.inputs).unwrap();
        assert_eq!(f.len(), 2, "{name}");
        for (i, t) in f.iter().enumerate() {
            match t {
                Some(t) => {
                    assert_eq!(t.shape(), &[b.n, 24], "{name}: modality {i} features [N, hidden]");
                    assert!(!t.is_tracked(), "{name}: features carry no gradient");
                }
                None => assert!(name == "unimodal" && i == 0, "{name}: modality {i} has an encoder"),
            }
        }
    }
}

#[test]
fn training_with_probe_reports_it() {
    let dir = tmp("probe-run");
    let (c, text) = config::load(None, &with(&["method.name=joint", "train.epochs=2", "train.probe=true"])).unwrap();
    let mut o = TrainOptions::new(&dir);
    o.progress = false;
    train::train(&gpu(), &c, &text, &o).unwrap();
    let rec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("probe.json")).unwrap()).unwrap();
    let fused = log_last_test_acc(&dir);
    let mut phi_sum = 0.0;
    for m in ["audio", "visual"] {
        let a = rec["probe"][m]["acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{rec}");
        phi_sum += rec["shapley"][m].as_f64().unwrap();
    }
    // efficiency: the contributions add up to v(all) − v(none)
    let none = rec["accuracy_without_inputs"].as_f64().unwrap();
    assert!((phi_sum - (fused - none)).abs() < 1e-9, "{rec} fused {fused}");
    assert!(std::fs::read_to_string(dir.join("summary.txt")).unwrap().contains("linear probe"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn log_last_test_acc(dir: &Path) -> f64 {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let l: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    l["test"]["acc"].as_f64().unwrap()
}

#[test]
fn shapley_values_of_known_games() {
    use equimodal::train::shapley::shapley;
    // additive game: each player's value is its own worth
    let v = [0.0, 0.3, 0.5, 0.8];
    let phi = shapley(&v, 2);
    assert!((phi[0] - 0.3).abs() < 1e-12 && (phi[1] - 0.5).abs() < 1e-12, "{phi:?}");
    // pure complementarity: only together they score; the gain is split evenly
    let phi = shapley(&[0.1, 0.1, 0.1, 0.9], 2);
    assert!((phi[0] - 0.4).abs() < 1e-12 && (phi[1] - 0.4).abs() < 1e-12, "{phi:?}");
    // three players, majority game (any two win): 1/3 each
    let v: Vec<f64> = (0..8u32).map(|s| if s.count_ones() >= 2 { 1.0 } else { 0.0 }).collect();
    for p in shapley(&v, 3) {
        assert!((p - 1.0 / 3.0).abs() < 1e-12);
    }
}
