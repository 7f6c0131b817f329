//! AIM as a method: tiny trainings through the trainer (SmallCnn + concat + SGD for 2
//! epochs; sum/FiLM fusion, Adam, MLP and transformer encoders for 1 epoch each), its
//! prototypes, the frozen head and the auxiliary batch-norm modes.
use crate::common;
use common::*;
use equimodal::ops;
use equimodal::Tensor;


const BASE: &str = r#"
seed = 3
[data]
kind = "synthetic"
num_classes = 4
n_train = 128
n_test = 32
[[data.modalities]]
name = "audio"
shape = [1, 12, 12]
signal = 0.1
style = "bands"
[[data.modalities]]
name = "visual"
shape = [1, 12, 12]
signal = 0.8
style = "blobs"
[model]
encoder = "small_cnn"
width = 4
depth = 2
fusion_hidden = 8
hidden = [16, 8]
[method]
name = "aim"
fusion = "concat"
[method.aim]
prototype_steps = 4
[train]
epochs = 2
batch_size = 32
lr = 0.05
workers = 1
checkpoint = false
"#;

fn run(sets: &[&str], tag: &str) -> Vec<serde_json::Value> {
    let mut table: toml::Table = BASE.parse().unwrap();
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    equimodal::config::apply_overrides(&mut table, &sets).unwrap();
    let cfg = equimodal::config::from_table(&table).unwrap();
    let dir = std::env::temp_dir().join(format!("equimodal-aim-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut opts = equimodal::train::TrainOptions::new(&dir);
    opts.progress = false;
    let text = toml::to_string(&table).unwrap();
    equimodal::train::train(&gpu(), &cfg, &text, &opts).unwrap();
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    log.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every epoch line has a finite loss and a well-formed `aim` section.
fn check_log(lines: &[serde_json::Value], depths: usize, rho: f64, s_max: f64) {
    for l in lines {
        let loss = l["train"]["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
        let a = &l["aim"];
        assert_eq!(a["depths"].as_u64().unwrap() as usize, depths, "{a}");
        for m in ["audio", "visual"] {
            let s = a["scores"][m].as_array().unwrap_or_else(|| panic!("scores.{m} in {a}"));
            assert_eq!(s.len(), depths);
            for v in s {
                let v = v.as_f64().unwrap();
                assert!((0.0..=1.0).contains(&v), "score {v}");
            }
        }
        let r = a["ratio"].as_array().unwrap();
        let st = a["strength"].as_array().unwrap();
        assert_eq!(r.len(), depths);
        assert_eq!(st.len(), depths);
        // the dominant modality has the highest final-depth score, the weak one the lowest,
        // and each ratio is the dominant's score over the weak one's at that depth
        let score = |m: &str| -> Vec<f64> { a["scores"][m].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect() };
        let (sa, sv) = (score("audio"), score("visual"));
        if sa[depths - 1] != sv[depths - 1] {
            let (dom, weak) = if sa[depths - 1] > sv[depths - 1] { ("audio", "visual") } else { ("visual", "audio") };
            assert_eq!((a["dominant"].as_str(), a["weak"].as_str()), (Some(dom), Some(weak)), "{a}");
            let (sd, sw) = (score(dom), score(weak));
            for (d, rv) in r.iter().enumerate() {
                let want = sd[d] / sw[d].max(1e-12);
                assert!((rv.as_f64().unwrap() - want).abs() <= 1e-5 * want, "ratio at depth {d}: {rv} vs {want} ({a})");
            }
        }
        for (r, s) in r.iter().zip(st) {
            let (r, s) = (r.as_f64().unwrap(), s.as_f64().unwrap());
            assert!(r.is_finite() && r > 0.0);
            assert!((0.0..=s_max + 1e-6).contains(&s), "strength {s}");
            let want = ((r - 1.0).tanh()).clamp(0.0, s_max);
            assert!((s - want).abs() < 1e-5, "strength {s} vs tanh(ratio {r} - 1) = {want}");
        }
        let md = a["mask_density"].as_object().unwrap();
        assert!(!md.is_empty());
        for (k, v) in md {
            let v = v.as_f64().unwrap();
            // layers here have >= 36 elements: round(ρn)/n is within 1/72 of ρ
            assert!((v - rho).abs() <= 1.0 / 72.0 + 1e-9, "density of {k}: {v}");
        }
    }
}

#[test]
fn aim_trains_small_cnn_concat_sgd() {
    let lines = run(&[], "cnn");
    assert_eq!(lines.len(), 2);
    check_log(&lines, 2, 0.5, 0.9);
    let md = lines[1]["aim"]["mask_density"].as_object().unwrap();
    // every conv weight of both encoders is scored and masked
    assert_eq!(md.len(), 4, "{md:?}");
    assert!(lines[1]["test"]["acc"].as_f64().unwrap().is_finite());
    // with a positive strength after epoch 1, epoch 2 trains through a real auxiliary block
    let s0: Vec<f64> = lines[0]["aim"]["strength"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let (main, aux) = (lines[1]["aim"]["main_loss"].as_f64().unwrap(), lines[1]["aim"]["aux_loss"].as_f64().unwrap());
    assert!(main.is_finite() && aux.is_finite());
    if s0.iter().any(|&s| s > 1e-3) {
        assert!(main != aux, "auxiliary loss {aux} equals the main loss although strengths are {s0:?}");
    }
}

#[test]
fn aim_with_sum_fusion_adam_and_rho() {
    let lines = run(&["method.fusion=\"sum\"", "train.optimizer=\"adam\"", "train.lr=0.003", "train.epochs=2", "method.aim.rho=0.3", "method.aim.v3=true"], "sum");
    check_log(&lines, 2, 0.3, 0.9);
}

#[test]
fn aim_with_film_fusion_mlp() {
    let lines = run(&["method.fusion=\"film\"", "train.epochs=1", "model.encoder=\"mlp\"", "model.hidden=[16, 8, 8]", "method.aim.s_max=0.5", "method.aim.aux_trains_head=false"], "film");
    check_log(&lines, 3, 0.5, 0.5);
}

#[test]
fn aim_with_resnet18_encoders() {
    // ResNet18 (base width 2) on 12x12 inputs: 5 depths (stem, layer1..4)
    let lines = run(&["train.epochs=2", "data.n_train=64", "data.n_test=16", "method.aim.prototype_steps=2", "model.encoder=\"resnet18\"", "model.width=2"], "resnet");
    check_log(&lines, 5, 0.5, 0.9);
}

#[test]
fn aim_with_transformer_encoders() {
    let lines = run(
        &["train.epochs=2", "data.n_train=64", "data.n_test=16", "method.aim.prototype_steps=2", "model.encoder=\"transformer\"", "model.width=8", "model.heads=2", "model.layers=2", "model.patch=[4, 4]", "method.fusion=\"gated\"", "train.optimizer=\"adam\"", "train.lr=0.003"],
        "vit",
    );
    check_log(&lines, 2, 0.5, 0.9);
}

#[test]
fn aim_config_errors_name_the_field() {
    // every bound, from both sides: the values just outside are errors naming the field,
    // the bounds themselves are allowed
    let bad = [
        ("rho", "1.5"), ("rho", "-0.1"), ("s_max", "1.01"), ("s_max", "-0.1"),
        ("prototype_every", "0"), ("mask_every", "0"), ("prototype_steps", "1000001"),
        ("prototype_lr", "0"), ("prototype_lr", "inf"), ("prototype_lr", "nan"),
        ("temperature", "0"), ("temperature", "inf"), ("temperature", "-1"),
        ("score_momentum", "1"), ("score_momentum", "-0.1"), ("pam_momentum", "1"), ("pam_momentum", "-0.1"),
        ("beta", "-1"), ("beta", "inf"), ("beta", "nan"), ("gamma", "-1"), ("gamma", "inf"), ("gamma", "nan"),
    ];
    for (field, value) in bad {
        let set = format!("method.aim.{field}={value}");
        let err = equimodal::config::load(None, &["method.name=aim".to_string(), set.clone()]).unwrap_err().to_string();
        assert!(err.contains(&format!("method.aim.{field}")), "{set}: {err}");
    }
    let good = [
        ("rho", "0"), ("rho", "1"), ("s_max", "0"), ("s_max", "1"), ("prototype_every", "1"), ("mask_every", "1"),
        ("prototype_steps", "1000000"), ("prototype_steps", "0"), ("score_momentum", "0"), ("pam_momentum", "0"),
        ("beta", "0"), ("gamma", "0"),
    ];
    for (field, value) in good {
        let set = format!("method.aim.{field}={value}");
        equimodal::config::load(None, &["method.name=aim".to_string(), set.clone()]).unwrap_or_else(|e| panic!("{set}: {e}"));
    }
    let err = equimodal::config::load(None, &["method.aim.bogus=1".to_string()]).unwrap_err().to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn aim_presets_load() {
    for f in ["synthetic_aim", "avmnist_aim", "cremad_aim"] {
        let p = repo_root().join("configs").join(format!("{f}.toml"));
        let (cfg, _) = equimodal::config::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(cfg.method.name.as_str(), "aim");
        assert_eq!(cfg.method.aim.rho, 0.5);
    }
}

/// DAP: after fitting, the frozen rest of the network (+ the head's unimodal view) classifies
/// every prototype as its own class, the CE went down, and no network parameter moved.
#[test]
fn prototypes_fit_to_their_classes_with_the_network_frozen() {
    use equimodal::nn::{Encoder, Fusion, FusionKind, MlpEncoder, Module};
    use rand::SeedableRng;
    let g = gpu();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let k = 5;
    let enc = MlpEncoder::new(&g, "enc.a", 12, &[16, 9], &mut rng).unwrap();
    let other = MlpEncoder::new(&g, "enc.b", 7, &[6], &mut rng).unwrap();
    let fusion = Fusion::new(&g, "fusion", FusionKind::Concat, &[enc.out_dim(), other.out_dim()], k, 8, &mut rng).unwrap();
    let labels = equimodal::ops::labels(&g, &(0..k as u32).collect::<Vec<_>>(), k).unwrap();
    let before: Vec<Vec<f32>> = enc.params().iter().chain(fusion.params().iter()).map(|p| p.tensor.to_vec().unwrap()).collect();
    let mut r = Rng::new(5);
    for (depth, width) in [(0usize, 16usize), (1, 9)] {
        let protos = Tensor::from_slice(&g, &r.normals(k * width).iter().map(|v| (0.5 * v) as f32).collect::<Vec<_>>(), &[k, width]).unwrap().requires_grad();
        let fit = |steps| equimodal::methods::aim::fit_prototypes(&enc, &fusion, 0, depth, &protos, &labels, steps, 0.05).unwrap();
        let first = fit(0);
        let last = fit(150);
        assert!(last < first && last < 0.5, "depth {depth}: CE {first} -> {last}");
        let _ng = equimodal::autograd::no_grad();
        let logits = fusion.unimodal(0, &enc.forward_from(&protos, depth, &equimodal::nn::Ctx::eval()).unwrap(), &equimodal::nn::Ctx::eval()).unwrap();
        let l = logits.to_vec().unwrap();
        for c in 0..k {
            let row = &l[c * k..(c + 1) * k];
            let arg = (0..k).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            assert_eq!(arg, c, "depth {depth}: prototype {c} classified as {arg} ({row:?})");
        }
    }
    let after: Vec<Vec<f32>> = enc.params().iter().chain(fusion.params().iter()).map(|p| p.tensor.to_vec().unwrap()).collect();
    assert_eq!(before, after, "the network must stay frozen while prototypes are fitted");
}

/// `Fusion::frozen` (used when `method.aim.aux_trains_head = false`): same logits, gradients
/// reach the features but no head parameter.
#[test]
fn frozen_head_passes_gradients_to_features_only() {
    use equimodal::nn::{Ctx, Fusion, FusionKind, Module};
    use rand::SeedableRng;
    let g = gpu();
    let mut r = Rng::new(8);
    for kind in [FusionKind::Sum, FusionKind::Concat, FusionKind::Film, FusionKind::Gated] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let fusion = Fusion::new(&g, "fusion", kind, &[5, 6], 4, 7, &mut rng).unwrap();
        let fa = Tensor::from_slice(&g, &r.normals(15).iter().map(|&v| v as f32).collect::<Vec<_>>(), &[3, 5]).unwrap().requires_grad();
        let fb = Tensor::from_slice(&g, &r.normals(18).iter().map(|&v| v as f32).collect::<Vec<_>>(), &[3, 6]).unwrap().requires_grad();
        let feats = [fa.clone(), fb.clone()];
        let frozen = fusion.frozen();
        let a = fusion.forward(&feats, &Ctx::train()).unwrap();
        let b = frozen.forward(&feats, &Ctx::train()).unwrap();
        assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap(), "{kind:?}");
        let grads = ops::sum_all(&b).unwrap().backward().unwrap();
        assert!(grads.get(&fa).is_some() && grads.get(&fb).is_some(), "{kind:?}: features get a gradient");
        for p in fusion.params() {
            assert!(grads.get(&p.tensor).is_none(), "{kind:?}: frozen head parameter {} got a gradient", p.name);
        }
        let grads = ops::sum_all(&a).unwrap().backward().unwrap();
        assert!(fusion.params().iter().all(|p| grads.get(&p.tensor).is_some()), "{kind:?}: the live head does get gradients");
    }
}

/// Depth outputs of a small CNN under `ctx`.
fn cnn_depths(net: &equimodal::nn::SmallCnn, x: &Tensor, ctx: &equimodal::nn::Ctx) -> Vec<Vec<f32>> {
    use equimodal::nn::Encoder;
    net.forward_depths(x, ctx).unwrap().1.iter().map(|h| h.to_vec().unwrap()).collect()
}

#[test]
fn auxiliary_batch_norm_modes() {
    // The auxiliary block damps each weight by 1 − s(1 − M). With its own batch statistics
    // (`aux_bn = "own"`), batch norm divides a uniform damping of a layer's weights right
    // back out; with the main forward's statistics (`"main"`) or the running ones the damping
    // reaches the block's output.
    use equimodal::nn::{BnStats, Ctx, Encoder, Module, SmallCnn};
    use rand::SeedableRng;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let g = gpu();
    let net = SmallCnn::new(&g, "enc", 1, 4, 2, &mut rand::rngs::StdRng::seed_from_u64(5)).unwrap();
    let mut rng = Rng::new(71);
    let x = Tensor::from_slice(&g, &to_f32(&rng.normals(6 * 12 * 12)), &[6, 1, 12, 12]).unwrap();
    let rec = Arc::new(Mutex::new(HashMap::new()));
    let main_ctx = Ctx { training: true, update_stats: false, bn_record: Some(rec.clone()), ..Default::default() };
    let full = cnn_depths(&net, &x, &main_ctx);
    let recorded = Arc::new(rec.lock().unwrap().clone());
    assert_eq!(recorded.len(), 2, "one record per batch norm");
    let conv0 = net.params().into_iter().find(|p| p.name == "enc.block0.conv.weight").unwrap();
    let aux = |s: f32, bn: BnStats| {
        let scales = HashMap::from([(conv0.name.clone(), equimodal::ops::full(&g, conv0.tensor.shape(), s).unwrap())]);
        let ctx = Ctx { training: true, update_stats: false, weight_scales: Some(Arc::new(scales)), bn, ..Default::default() };
        cnn_depths(&net, &x, &ctx)
    };
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let rms = (full[0].iter().map(|v| v * v).sum::<f32>() / full[0].len() as f32).sqrt();
    // no damping: the main statistics reproduce the main forward bit for bit
    assert_eq!(aux(1.0, BnStats::Given(recorded.clone())), full, "scale 1 through the main statistics");
    // damping 0.5: own statistics normalise it away (only eps tells them apart) ...
    let own = aux(0.5, BnStats::Mode);
    assert!(max_diff(&own[0], &full[0]) < 1e-3 * rms, "own: {} vs rms {rms}", max_diff(&own[0], &full[0]));
    // ... the main and the running statistics do not
    for (what, bn) in [("main", BnStats::Given(recorded.clone())), ("running", BnStats::Running)] {
        let d = aux(0.5, bn);
        assert!(max_diff(&d[0], &full[0]) > 0.1 * rms, "{what}: the damping vanished ({} vs rms {rms})", max_diff(&d[0], &full[0]));
    }
    // a layer the recording forward never reached is an error, not a silent fallback
    let e = net.forward_depths(&x, &Ctx { training: true, bn: BnStats::Given(Arc::new(HashMap::new())), ..Default::default() });
    assert!(e.is_err_and(|e| e.to_string().contains("enc.block0.bn")));
}

#[test]
fn aim_trains_with_every_aux_bn_mode() {
    for mode in ["main", "running", "own"] {
        let lines = run(&[&format!("method.aim.aux_bn=\"{mode}\"")], &format!("auxbn-{mode}"));
        assert_eq!(lines.len(), 2, "{mode}");
        check_log(&lines, 2, 0.5, 0.9);
    }
}

