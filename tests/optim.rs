//! Optimizers against f64 CPU re-implementations of PyTorch's update rules, score EMA,
//! checkpoint state round trips, typed errors and learning-rate schedules.
mod common;
use common::*;
use equimodal::optim::{Adam, AdamConfig, LrSchedule, Optimizer, Param, Scheduler, Sgd, SgdConfig, StateTensor};
use equimodal::{Error, Gradients, Tensor};
use std::collections::HashMap;

// ---- CPU references (f64) ------------------------------------------------------------

#[derive(Default)]
struct RefState {
    step: u64,
    buf: Option<Vec<f64>>,
    m: Vec<f64>,
    v: Vec<f64>,
    vmax: Vec<f64>,
    score: Option<(Vec<f64>, f64)>,
}

enum RefCfg {
    Sgd(SgdConfig),
    Adam(AdamConfig),
}

struct RefOpt {
    cfg: RefCfg,
    lr: f64,
    state: HashMap<String, RefState>,
}

impl RefOpt {
    fn new(cfg: RefCfg) -> RefOpt {
        let lr = match &cfg {
            RefCfg::Sgd(c) => c.lr,
            RefCfg::Adam(c) => c.lr,
        } as f64;
        RefOpt { cfg, lr, state: HashMap::new() }
    }

    /// torch.optim.SGD / Adam / AdamW single-tensor update, in f64.
    fn step(&mut self, name: &str, theta: &mut [f64], g: &[f64]) {
        let n = theta.len();
        let s = self.state.entry(name.to_string()).or_default();
        s.step += 1;
        if let Some((sc, m)) = &mut s.score {
            for i in 0..n {
                sc[i] = *m * sc[i] + (1.0 - *m) * (g[i] * theta[i]).abs();
            }
        }
        match &self.cfg {
            RefCfg::Sgd(c) => {
                let (mom, damp, wd) = (c.momentum as f64, c.dampening as f64, c.weight_decay as f64);
                let mut d: Vec<f64> = (0..n).map(|i| g[i] + wd * theta[i]).collect();
                if mom != 0.0 {
                    let buf = match s.buf.take() {
                        None => d.clone(),
                        Some(b) => (0..n).map(|i| mom * b[i] + (1.0 - damp) * d[i]).collect(),
                    };
                    if c.nesterov {
                        d = (0..n).map(|i| d[i] + mom * buf[i]).collect();
                    } else {
                        d = buf.clone();
                    }
                    s.buf = Some(buf);
                }
                for i in 0..n {
                    theta[i] -= self.lr * d[i];
                }
            }
            RefCfg::Adam(c) => {
                let (b1, b2, eps, wd) = (c.beta1 as f64, c.beta2 as f64, c.eps as f64, c.weight_decay as f64);
                if s.m.is_empty() {
                    s.m = vec![0.0; n];
                    s.v = vec![0.0; n];
                    s.vmax = vec![0.0; n];
                }
                let t = s.step as f64;
                let bc1 = 1.0 - b1.powf(t);
                let bc2 = 1.0 - b2.powf(t);
                for i in 0..n {
                    let mut gi = g[i];
                    if c.decoupled {
                        theta[i] *= 1.0 - self.lr * wd;
                    } else {
                        gi += wd * theta[i];
                    }
                    s.m[i] = b1 * s.m[i] + (1.0 - b1) * gi;
                    s.v[i] = b2 * s.v[i] + (1.0 - b2) * gi * gi;
                    let mut vd = s.v[i];
                    if c.amsgrad {
                        s.vmax[i] = s.vmax[i].max(s.v[i]);
                        vd = s.vmax[i];
                    }
                    let denom = vd.sqrt() / bc2.sqrt() + eps;
                    theta[i] -= self.lr / bc1 * s.m[i] / denom;
                }
            }
        }
    }
}

// ---- harness ---------------------------------------------------------------------------

fn param(name: &str, data: &[f64], shape: &[usize]) -> Param {
    Param::new(name, upload(&gpu(), data, shape).requires_grad())
}

/// Six steps on three parameters (shapes not multiples of 256), a fourth added after two
/// steps, one parameter without a gradient at step 3, lr halved at step 4, scores on two
/// parameters. Every step compares all parameters (and scores) with the f64 reference.
fn run_against_reference(label: &str, make: &dyn Fn(&[Param]) -> Box<dyn Optimizer>, cfg: RefCfg, rtol: f64, atol: f64) {
    let g = gpu();
    let mut rng = Rng::new(label.len() as u64 * 7919 + 3);
    let shapes: Vec<(&str, Vec<usize>)> = vec![("a", vec![13, 21]), ("b", vec![37]), ("c", vec![3, 5, 71]), ("one", vec![1])];
    let mut cpu: HashMap<String, Vec<f64>> = HashMap::new();
    let mut params = Vec::new();
    for (name, shape) in &shapes {
        let x = round_f32(&rng.normals(numel(shape)));
        params.push(param(name, &x, shape));
        cpu.insert(name.to_string(), x);
    }
    // a module-like holder of the same storage: must see the in-place updates
    let holder = params[0].tensor.detach();
    let mut opt = make(&params);
    let mut reference = RefOpt::new(cfg);
    assert_eq!(opt.lr() as f64, reference.lr, "{label}: the configured learning rate");
    opt.enable_scores(&["a"], 0.7).unwrap();
    reference.state.entry("a".into()).or_default().score = Some((vec![0.0; 13 * 21], 0.7f32 as f64));
    assert!(opt.scores("b").is_none());
    let late_shape = vec![2, 150];
    for step in 0..6 {
        if step == 2 {
            let x = round_f32(&rng.normals(numel(&late_shape)));
            let p = param("late", &x, &late_shape);
            opt.add_params(&[p.clone(), params[0].clone()]); // re-adding "a" is a no-op
            params.push(p);
            cpu.insert("late".into(), x);
            opt.enable_scores(&["late"], 0.5).unwrap();
            reference.state.entry("late".into()).or_default().score = Some((vec![0.0; 300], 0.5));
            assert_eq!(opt.params().len(), 5, "{label}: params after add");
        }
        if step == 4 {
            opt.set_lr(opt.lr() * 0.5);
            reference.lr = opt.lr() as f64;
        }
        let mut grads = Gradients::new();
        let before_b = params[1].tensor.to_vec().unwrap();
        for p in &params {
            if step == 3 && p.name == "b" {
                continue; // no gradient: untouched, state unchanged
            }
            let gv = round_f32(&rng.normals(p.tensor.numel()));
            grads.insert(&p.tensor, upload(&g, &gv, p.tensor.shape()));
            reference.step(&p.name, cpu.get_mut(&p.name).unwrap(), &gv);
        }
        opt.step(&grads).unwrap_or_else(|e| panic!("{label} step {step}: {e}"));
        for p in &params {
            let got = p.tensor.to_vec().unwrap();
            assert_close(&format!("{label} step {step} param {}", p.name), &got, &cpu[&p.name], rtol, atol);
            if let Some((s, _)) = &reference.state.get(&p.name).and_then(|s| s.score.as_ref()) {
                let got = opt.scores(&p.name).expect("score enabled").to_vec().unwrap();
                assert_close(&format!("{label} step {step} score {}", p.name), &got, s, rtol, atol);
            }
        }
        if step == 3 {
            assert_eq!(params[1].tensor.to_vec().unwrap(), before_b, "{label}: b without gradient changed");
        }
        assert_eq!(holder.to_vec().unwrap(), params[0].tensor.to_vec().unwrap(), "{label}: holder sees update");
    }
}

#[test]
fn sgd_matches_pytorch_rules() {
    let cases = [
        ("sgd plain", SgdConfig { lr: 0.1, ..Default::default() }),
        ("sgd momentum", SgdConfig { lr: 0.05, momentum: 0.9, ..Default::default() }),
        ("sgd dampening", SgdConfig { lr: 0.05, momentum: 0.8, dampening: 0.3, ..Default::default() }),
        ("sgd nesterov", SgdConfig { lr: 0.05, momentum: 0.9, nesterov: true, ..Default::default() }),
        ("sgd wd", SgdConfig { lr: 0.1, weight_decay: 0.01, ..Default::default() }),
        ("sgd nesterov wd", SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: 1e-2, nesterov: true, dampening: 0.0 }),
        ("sgd momentum wd damp", SgdConfig { lr: 0.05, momentum: 0.5, weight_decay: 0.1, dampening: 0.5, nesterov: false }),
    ];
    for (label, c) in cases {
        run_against_reference(label, &|p| Box::new(Sgd::new(p, c).unwrap()), RefCfg::Sgd(c), 2e-5, 2e-6);
    }
}

#[test]
fn adam_matches_pytorch_rules() {
    let base = AdamConfig { lr: 0.01, ..Default::default() };
    let cases = [
        ("adam", base),
        ("adam l2", AdamConfig { weight_decay: 0.05, ..base }),
        ("adamw", AdamConfig { weight_decay: 0.05, decoupled: true, ..base }),
        ("adamw amsgrad", AdamConfig { weight_decay: 0.01, decoupled: true, amsgrad: true, beta1: 0.8, beta2: 0.95, eps: 1e-6, lr: 0.02 }),
        ("adam amsgrad", AdamConfig { amsgrad: true, ..base }),
    ];
    for (label, c) in cases {
        run_against_reference(label, &|p| Box::new(Adam::new(p, c).unwrap()), RefCfg::Adam(c), 2e-5, 2e-6);
    }
}

// ---- checkpoint state ------------------------------------------------------------------

fn fresh_params(rng: &mut Rng) -> Vec<(String, Vec<f64>, Vec<usize>)> {
    [("w", vec![17, 19]), ("bias", vec![19]), ("idle", vec![5, 3])]
        .into_iter()
        .map(|(n, s)| (n.to_string(), round_f32(&rng.normals(numel(&s))), s))
        .collect()
}

fn state_round_trip(label: &str, make: &dyn Fn(&[Param]) -> Box<dyn Optimizer>) {
    let g = gpu();
    let mut rng = Rng::new(99);
    let init = fresh_params(&mut rng);
    let pa: Vec<Param> = init.iter().map(|(n, d, s)| param(n, d, s)).collect();
    let mut opt_a = make(&pa);
    opt_a.enable_scores(&["w"], 0.9).unwrap();
    let grads_for = |ps: &[Param], gv: &[Vec<f64>]| {
        let mut grads = Gradients::new();
        // "idle" never gets a gradient: its state must round-trip as "step 0"
        for (p, v) in ps.iter().zip(gv).filter(|(p, _)| p.name != "idle") {
            grads.insert(&p.tensor, upload(&g, v, p.tensor.shape()));
        }
        grads
    };
    for _ in 0..3 {
        let gv: Vec<Vec<f64>> = pa.iter().map(|p| round_f32(&rng.normals(p.tensor.numel()))).collect();
        opt_a.step(&grads_for(&pa, &gv)).unwrap();
    }
    let saved = opt_a.state_tensors().unwrap();
    let names: Vec<&str> = saved.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(names.contains(&"step.w") && names.contains(&"step.idle") && names.contains(&"score.w"), "{label}: {names:?}");
    // a new optimizer on copies of the current parameters
    let pb: Vec<Param> = pa.iter().map(|p| Param::new(p.name.clone(), p.tensor.deep_copy().unwrap().requires_grad())).collect();
    let mut opt_b = make(&pb);
    opt_b.load_state_tensors(&saved).unwrap();
    assert_eq!(opt_b.state_tensors().unwrap(), saved, "{label}: state after load");
    for _ in 0..2 {
        let gv: Vec<Vec<f64>> = pa.iter().map(|p| round_f32(&rng.normals(p.tensor.numel()))).collect();
        opt_a.step(&grads_for(&pa, &gv)).unwrap();
        opt_b.step(&grads_for(&pb, &gv)).unwrap();
    }
    for (a, b) in pa.iter().zip(&pb) {
        assert_eq!(a.tensor.to_vec().unwrap(), b.tensor.to_vec().unwrap(), "{label}: {} after resume", a.name);
    }
    assert_eq!(opt_a.state_tensors().unwrap(), opt_b.state_tensors().unwrap(), "{label}: state after resume");
    assert_eq!(opt_a.scores("w").unwrap().to_vec().unwrap(), opt_b.scores("w").unwrap().to_vec().unwrap());
}

#[test]
fn state_round_trip_resumes_exactly() {
    let sgd = SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: 1e-3, nesterov: true, dampening: 0.0 };
    state_round_trip("sgd", &|p| Box::new(Sgd::new(p, sgd).unwrap()));
    let adam = AdamConfig { lr: 0.01, weight_decay: 0.01, decoupled: true, amsgrad: true, ..Default::default() };
    state_round_trip("adamw", &|p| Box::new(Adam::new(p, adam).unwrap()));
}

#[test]
fn state_holds_moments_only_for_stepped_parameters_and_round_trips_without_momentum() {
    // "w" stepped twice, "idle" never: a moment of "idle" would be memory never written
    let sgd_m = SgdConfig { lr: 0.05, momentum: 0.9, ..Default::default() };
    let sgd = SgdConfig { lr: 0.1, ..Default::default() };
    let adam = AdamConfig { lr: 0.01, beta1: 0.8, ..Default::default() };
    let ams = AdamConfig { amsgrad: true, ..adam };
    let cases: [(&str, Box<dyn Fn(&[Param]) -> Box<dyn Optimizer>>, &[&str]); 4] = [
        ("sgd momentum", Box::new(move |p| Box::new(Sgd::new(p, sgd_m).unwrap())), &["momentum.w", "step.idle", "step.w"]),
        ("sgd", Box::new(move |p| Box::new(Sgd::new(p, sgd).unwrap())), &["step.idle", "step.w"]),
        ("adam", Box::new(move |p| Box::new(Adam::new(p, adam).unwrap())), &["exp_avg.w", "exp_avg_sq.w", "step.idle", "step.w"]),
        ("amsgrad", Box::new(move |p| Box::new(Adam::new(p, ams).unwrap())), &["exp_avg.w", "exp_avg_sq.w", "max_exp_avg_sq.w", "step.idle", "step.w"]),
    ];
    for (label, make, want) in &cases {
        let ps = [param("w", &[1.0, -2.0, 0.5], &[3]), param("idle", &[0.0, 1.0], &[2])];
        let mut opt = make(&ps);
        let mut grads = Gradients::new();
        grads.insert(&ps[0].tensor, upload(&gpu(), &[0.3, 0.1, -0.2], &[3]));
        opt.step(&grads).unwrap();
        opt.step(&grads).unwrap();
        let mut names: Vec<String> = opt.state_tensors().unwrap().into_iter().map(|e| e.0).collect();
        names.sort();
        assert_eq!(names, *want, "{label}");
        // and without momentum / AMSGrad the state still resumes exactly
        state_round_trip(label, make.as_ref());
    }
}

#[test]
fn step_counts_and_the_config_as_last_set() {
    let ps = [param("w", &[1.0, -2.0], &[2]), param("idle", &[0.0], &[1])];
    let mut grads = Gradients::new();
    grads.insert(&ps[0].tensor, upload(&gpu(), &[0.3, 0.1], &[2]));
    let sgd_cfg = SgdConfig { lr: 0.05, momentum: 0.5, weight_decay: 0.01, ..Default::default() };
    let mut sgd = Sgd::new(&ps, sgd_cfg).unwrap();
    let adam_cfg = AdamConfig { lr: 0.02, beta1: 0.7, amsgrad: true, ..Default::default() };
    let mut adam = Adam::new(&ps, adam_cfg).unwrap();
    for _ in 0..2 {
        sgd.step(&grads).unwrap();
        adam.step(&grads).unwrap();
    }
    assert_eq!([sgd.step_count("w"), sgd.step_count("idle"), sgd.step_count("nope")], [Some(2), Some(0), None]);
    assert_eq!([adam.step_count("w"), adam.step_count("idle"), adam.step_count("nope")], [Some(2), Some(0), None]);
    sgd.set_lr(0.025);
    adam.set_lr(0.01);
    assert_eq!(*sgd.config(), SgdConfig { lr: 0.025, ..sgd_cfg });
    assert_eq!(*adam.config(), AdamConfig { lr: 0.01, ..adam_cfg });
}

#[test]
fn adam_allocates_at_the_first_step_the_moments_a_full_device_refused_earlier() {
    // a device with no room when the parameter is added: its moments are allocated at the
    // first step, which fails cleanly while there is still no room and works once there is
    let g = equimodal::Gpu::new(test_options()).unwrap();
    let w = Param::new("w", upload(&g, &[1.0, -2.0, 0.5, 4.0], &[4]).requires_grad());
    let mut grads = Gradients::new();
    grads.insert(&w.tensor, upload(&g, &[0.5, -0.5, 1.0, 0.0], &[4]));
    g.trim_memory();
    // fill every free block of the segments held (tensors share segments), then allow
    // nothing more to be reserved: the moments find no room
    let _filler: Vec<equimodal::Tensor> = g
        .memory_cached_by_size()
        .into_iter()
        .flat_map(|(size, n)| (0..n).map(move |_| size))
        // the canary test mode adds 16 bytes of slack to every block
        .map(|size| equimodal::Tensor::zeros(&g, &[(size as usize - if g.pool_canary() { 16 } else { 0 }) / 4]).unwrap())
        .collect();
    assert_eq!(g.memory().cached, 0, "the filler took every free block");
    g.set_memory_limit(Some(g.memory().reserved));
    let mut adam = Adam::new(std::slice::from_ref(&w), AdamConfig { lr: 0.1, ..Default::default() }).unwrap();
    assert!(adam.step(&grads).is_err(), "a step with no room for the moments");
    assert_eq!((w.tensor.to_vec().unwrap(), adam.step_count("w")), (vec![1.0, -2.0, 0.5, 4.0], Some(0)));
    g.set_memory_limit(None);
    adam.step(&grads).unwrap();
    // Adam's first step moves by lr·g / (|g| + eps): lr·sign(g), nothing where g = 0
    assert_close("first step", &w.tensor.to_vec().unwrap(), &[0.9, -1.9, 0.4, 4.0], 1e-6, 1e-6);
}

#[test]
fn loading_bad_state_is_a_typed_error_and_changes_nothing() {
    let mut rng = Rng::new(5);
    let init = fresh_params(&mut rng);
    let ps: Vec<Param> = init.iter().map(|(n, d, s)| param(n, d, s)).collect();
    let mut opt = Adam::new(&ps, AdamConfig::default()).unwrap();
    let mut grads = Gradients::new();
    for p in &ps {
        grads.insert(&p.tensor, upload(&gpu(), &rng.normals(p.tensor.numel()), p.tensor.shape()));
    }
    opt.step(&grads).unwrap();
    let good = opt.state_tensors().unwrap();

    let edit = |f: &dyn Fn(&mut Vec<StateTensor>)| {
        let mut s = good.clone();
        f(&mut s);
        s
    };
    // mis-shaped entry
    let bad_shape = edit(&|s| {
        let e = s.iter_mut().find(|e| e.0 == "exp_avg.w").unwrap();
        e.1 = vec![19, 17];
    });
    match opt.load_state_tensors(&bad_shape) {
        Err(Error::Shape { msg, .. }) => assert!(msg.contains("exp_avg.w") && msg.contains("[19, 17]"), "{msg}"),
        other => panic!("expected a shape error, got {other:?}"),
    }
    // wrong data length for the declared shape
    let bad_len = edit(&|s| s.iter_mut().find(|e| e.0 == "exp_avg_sq.bias").unwrap().2.pop().map(|_| ()).unwrap());
    assert!(matches!(opt.load_state_tensors(&bad_len), Err(Error::Shape { .. })));
    // missing entry
    let missing = edit(&|s| s.retain(|e| e.0 != "exp_avg_sq.bias"));
    match opt.load_state_tensors(&missing) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "exp_avg_sq.bias"),
        other => panic!("expected a missing-entry error, got {other:?}"),
    }
    let no_step = edit(&|s| s.retain(|e| e.0 != "step.idle"));
    assert!(matches!(opt.load_state_tensors(&no_step), Err(Error::Config { field, .. }) if field == "step.idle"));
    // unknown entry
    let unknown = edit(&|s| s.push(("exp_avg.nope".into(), vec![1], vec![0.0])));
    assert!(matches!(opt.load_state_tensors(&unknown), Err(Error::Config { field, .. }) if field == "exp_avg.nope"));
    // SGD with momentum: momentum buffer required once a step was taken
    let mut sgd = Sgd::new(&ps, SgdConfig { momentum: 0.9, ..Default::default() }).unwrap();
    sgd.step(&grads).unwrap();
    let mut s = sgd.state_tensors().unwrap();
    s.retain(|e| e.0 != "momentum.w");
    assert!(matches!(sgd.load_state_tensors(&s), Err(Error::Config { field, .. }) if field == "momentum.w"));
    // nothing was changed by the failed loads
    assert_eq!(opt.state_tensors().unwrap(), good);
    assert_eq!(opt.step_count("w"), Some(1));
}

#[test]
fn config_and_gradient_errors() {
    let mut rng = Rng::new(11);
    let p = param("w", &rng.normals(10), &[10]);
    let nest = SgdConfig { momentum: 0.9, dampening: 0.1, nesterov: true, ..Default::default() };
    assert!(matches!(Sgd::new(std::slice::from_ref(&p), nest), Err(Error::Config { .. })));
    assert!(matches!(Adam::new(std::slice::from_ref(&p), AdamConfig { beta2: 1.0, ..Default::default() }), Err(Error::Config { .. })));
    let mut opt = Sgd::new(std::slice::from_ref(&p), SgdConfig::default()).unwrap();
    // gradient of the wrong shape
    let mut grads = Gradients::new();
    grads.insert(&p.tensor, Tensor::zeros(&gpu(), &[11]).unwrap());
    assert!(matches!(opt.step(&grads), Err(Error::Shape { .. })));
    // unknown parameter for scores
    assert!(matches!(opt.enable_scores(&["nope"], 0.5), Err(Error::Config { .. })));
    assert!(matches!(opt.enable_scores(&["w"], 1.5), Err(Error::Config { .. })));
    // duplicate name for another tensor: reported by the next step
    let q = param("w", &rng.normals(4), &[4]);
    opt.add_params(&[q]);
    assert!(matches!(opt.step(&Gradients::new()), Err(Error::Config { .. })));
}

// ---- schedules ---------------------------------------------------------------------------

fn close(a: f32, b: f64) -> bool {
    (a as f64 - b).abs() <= 1e-7 + 1e-6 * b.abs()
}

#[test]
fn scheduler_values() {
    // StepLR(step_size=3, gamma=0.1)
    let s = Scheduler::new(0.1, LrSchedule::Step { step_size: 3, gamma: 0.1 }, 0);
    let want = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001];
    for (e, w) in want.iter().enumerate() {
        assert!(close(s.lr_at(e), *w), "step epoch {e}: {} vs {w}", s.lr_at(e));
    }
    // CosineAnnealingLR(T_max=10, eta_min=0.001): eta_min + (base - eta_min)(1 + cos(pi e / 10)) / 2
    let s = Scheduler::new(0.1, LrSchedule::Cosine { total: 10, min_lr: 0.001 }, 0);
    let torch = [0.1, 0.0975772976, 0.0905463412, 0.07959537, 0.0657963412, 0.0505, 0.0352036588, 0.02140463, 0.0104536588, 0.0034227024];
    for (e, w) in torch.iter().enumerate() {
        assert!((s.lr_at(e) as f64 - w).abs() < 1e-7, "cosine epoch {e}: {} vs {w}", s.lr_at(e));
    }
    assert!(close(s.lr_at(10), 0.001) && close(s.lr_at(25), 0.001));
    // warm-up 3 then cosine over the remaining 9 of 12 epochs
    let s = Scheduler::new(0.2, LrSchedule::Cosine { total: 12, min_lr: 0.0 }, 3);
    for (e, w) in [0.05, 0.1, 0.15, 0.2].iter().enumerate() {
        assert!(close(s.lr_at(e), *w), "warm-up epoch {e}: {}", s.lr_at(e));
    }
    let w7 = 0.2 * (1.0 + (std::f64::consts::PI * 4.0 / 9.0).cos()) / 2.0;
    assert!(close(s.lr_at(7), w7));
    assert!(s.lr_at(11) > 0.0 && close(s.lr_at(12), 0.0));
    // warm-up then step decay counted from the end of the warm-up; constant
    let s = Scheduler::new(1.0, LrSchedule::Step { step_size: 2, gamma: 0.5 }, 1);
    let want = [0.5, 1.0, 1.0, 0.5, 0.5, 0.25];
    for (e, w) in want.iter().enumerate() {
        assert!(close(s.lr_at(e), *w), "warm-up step epoch {e}: {}", s.lr_at(e));
    }
    let s = Scheduler::new(0.3, LrSchedule::Constant, 0);
    assert!((0..5).all(|e| close(s.lr_at(e), 0.3)));
    let mut rng = Rng::new(1);
    let mut opt = Sgd::new(&[param("w", &rng.normals(3), &[3])], SgdConfig::default()).unwrap();
    let lr = Scheduler::new(0.4, LrSchedule::Constant, 1).apply(&mut opt, 0);
    assert!(close(lr, 0.2) && close(opt.lr(), 0.2));
}

#[test]
fn clip_grad_norm_scales_to_the_global_norm() {
    use equimodal::optim::{clip_grad_norm, Param};
    let g = gpu();
    let a = Tensor::from_slice(&g, &[0.0; 3], &[3]).unwrap().requires_grad();
    let b = Tensor::from_slice(&g, &[0.0; 2], &[2]).unwrap().requires_grad();
    let params = vec![Param::new("a", a.clone()), Param::new("b", b.clone())];
    let mut grads = equimodal::Gradients::new();
    grads.insert(&a, Tensor::from_slice(&g, &[3.0, 0.0, 4.0], &[3]).unwrap());
    grads.insert(&b, Tensor::from_slice(&g, &[0.0, 12.0], &[2]).unwrap());
    // global norm 13: clipped to 6.5 -> factor 0.5
    let c = clip_grad_norm(&params, &grads, 6.5).unwrap();
    let ga = c.get(&a).unwrap().to_vec().unwrap();
    let gb = c.get(&b).unwrap().to_vec().unwrap();
    for (x, w) in ga.iter().chain(&gb).zip([1.5, 0.0, 2.0, 0.0, 6.0]) {
        assert!((x - w).abs() < 1e-5, "{ga:?} {gb:?}");
    }
    // below the limit: unchanged
    let c = clip_grad_norm(&params, &grads, 100.0).unwrap();
    assert_eq!(c.get(&b).unwrap().to_vec().unwrap(), vec![0.0, 12.0]);
}

#[test]
fn the_clipping_wrapper_is_its_inner_optimizer_fed_clipped_gradients() {
    use equimodal::optim::ClipGradNorm;
    // under a limit no gradient reaches, the wrapper is exactly SGD / Adam: parameters added
    // late, the learning rate, scores and the checkpoint state all go to the inner optimizer
    let sgd = SgdConfig { lr: 0.05, momentum: 0.9, ..Default::default() };
    let clipped_sgd = |p: &[Param]| -> Box<dyn Optimizer> { Box::new(ClipGradNorm::new(Box::new(Sgd::new(p, sgd).unwrap()), 1e30).unwrap()) };
    run_against_reference("clip(sgd)", &clipped_sgd, RefCfg::Sgd(sgd), 2e-5, 2e-6);
    state_round_trip("clip(sgd)", &clipped_sgd);
    let adam = AdamConfig { lr: 0.01, ..Default::default() };
    let clipped_adam = |p: &[Param]| -> Box<dyn Optimizer> { Box::new(ClipGradNorm::new(Box::new(Adam::new(p, adam).unwrap()), 1e30).unwrap()) };
    run_against_reference("clip(adam)", &clipped_adam, RefCfg::Adam(adam), 2e-5, 2e-6);
    // the learning rate read and set through the wrapper
    let w = param("w", &[1.0, 2.0], &[2]);
    let mut opt = ClipGradNorm::new(Box::new(Sgd::new(&[w.clone()], sgd).unwrap()), 2.5).unwrap();
    assert_eq!(opt.lr(), 0.05);
    opt.set_lr(0.02);
    assert_eq!(opt.lr(), 0.02);
    // above the limit: gradient (3, 4), norm 5, scaled to norm 2.5 -> (1.5, 2); SGD's first
    // step with momentum moves by lr times it
    let mut grads = Gradients::new();
    grads.insert(&w.tensor, upload(&gpu(), &[3.0, 4.0], &[2]));
    opt.step(&grads).unwrap();
    assert_close("clipped step", &w.tensor.to_vec().unwrap(), &[1.0 - 0.02 * 1.5, 2.0 - 0.02 * 2.0], 1e-6, 1e-7);
}

/// SGD and Adam (one thread per parameter element) with at most 2 workgroups per grid
/// dimension (`with_workgroup_cap`): parameter "c" of 1,065 elements takes 5 workgroups,
/// a 2 x 2 x 2 grid with 3 spare; the pool canary must hold.
#[test]
fn optimizers_under_workgroup_cap() {
    with_workgroup_cap(2, || {
        sgd_matches_pytorch_rules();
        adam_matches_pytorch_rules();
        assert_canaries("optimizer steps");
    });
}

/// `step_scaled` (the clip coefficient applied inside the update kernel) is bit-identical to
/// stepping on gradients scaled first, for SGD (momentum, Nesterov, weight decay, scores)
/// and Adam (AdamW, AMSGrad, scores), over three steps; a scale of the wrong size is a
/// typed error that changes nothing.
#[test]
fn a_fused_gradient_scale_equals_scaling_first() {
    let g = gpu();
    let mut rng = Rng::new(77);
    let sgd = SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: 0.01, nesterov: true, ..Default::default() };
    let adam = AdamConfig { lr: 0.01, weight_decay: 0.02, decoupled: true, amsgrad: true, ..Default::default() };
    type Make = Box<dyn Fn(&[Param]) -> Box<dyn Optimizer>>;
    let makers: [(&str, Make); 2] = [
        ("sgd", Box::new(move |p: &[Param]| -> Box<dyn Optimizer> { Box::new(Sgd::new(p, sgd).unwrap()) })),
        ("adam", Box::new(move |p: &[Param]| -> Box<dyn Optimizer> { Box::new(Adam::new(p, adam).unwrap()) })),
    ];
    for (label, make) in &makers {
        let data = rng.normals(1030);
        let (fused_p, first_p) = (param("w", &data, &[1030]), param("w", &data, &[1030]));
        let (mut fused, mut first) = (make(&[fused_p.clone()]), make(&[first_p.clone()]));
        fused.enable_scores(&["w"], 0.9).unwrap();
        first.enable_scores(&["w"], 0.9).unwrap();
        for step in 0..3 {
            let grad = upload(&g, &rng.normals(1030), &[1030]);
            let scale = upload(&g, &[0.37 + 0.1 * step as f64], &[1]);
            let mut a = Gradients::new();
            a.insert(&fused_p.tensor, grad.clone());
            fused.step_scaled(&a, &scale).unwrap();
            let mut b = Gradients::new();
            b.insert(&first_p.tensor, equimodal::ops::mul(&grad, &scale).unwrap());
            first.step(&b).unwrap();
            assert_eq!(fused_p.tensor.to_vec().unwrap(), first_p.tensor.to_vec().unwrap(), "{label} step {step}: parameters");
            assert_eq!(fused.scores("w").unwrap().to_vec().unwrap(), first.scores("w").unwrap().to_vec().unwrap(), "{label} step {step}: scores");
        }
        let before = fused_p.tensor.to_vec().unwrap();
        let mut a = Gradients::new();
        a.insert(&fused_p.tensor, upload(&g, &rng.normals(1030), &[1030]));
        let e = fused.step_scaled(&a, &upload(&g, &[1.0, 2.0], &[2])).unwrap_err().to_string();
        assert!(e.contains("one f32 element"), "{label}: {e}");
        assert_eq!(fused_p.tensor.to_vec().unwrap(), before, "{label}: a bad scale changed the parameters");
    }
}

// ---- dynamic loss scaling (train.loss_scale = "dynamic") ---------------------------------

/// One loss over `w` whose gradient is 2·w·x, plus a second backward pass into the same
/// gradients (as methods with two losses per step do).
fn two_pass_grads(w: &Param, x: &Tensor, y: &Tensor) -> Gradients {
    use equimodal::ops;
    let mut grads = Gradients::new();
    ops::sum_all(&ops::mul(&ops::square(&w.tensor).unwrap(), x).unwrap()).unwrap().backward_into(&mut grads).unwrap();
    ops::sum_all(&ops::mul(&w.tensor, y).unwrap()).unwrap().backward_into(&mut grads).unwrap();
    grads
}

/// The scale is a power of two on f32 gradients, so under it every finite step is the
/// unscaled step bit for bit (two backward passes accumulating, SGD with momentum, over
/// four steps), while the scale doubles after each `growth_interval` good steps.
#[test]
fn the_loss_scale_changes_no_bit_of_a_finite_step_and_grows_after_good_steps() {
    use equimodal::optim::{GradScaler, ScaleCounts};
    let g = gpu();
    let mut rng = Rng::new(5);
    let sgd = SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: 0.01, ..Default::default() };
    let data = rng.normals(1030);
    let (scaled_w, plain_w) = (param("w", &data, &[1030]), param("w", &data, &[1030]));
    let mut scaled = GradScaler::new(&g, Box::new(Sgd::new(&[scaled_w.clone()], sgd).unwrap()), 2).unwrap();
    let mut plain = Sgd::new(&[plain_w.clone()], sgd).unwrap();
    assert_eq!(scaled.scale(), 65536.0, "PyTorch's initial scale");
    for step in 0..4 {
        let (x, y) = (upload(&g, &rng.normals(1030), &[1030]), upload(&g, &rng.normals(1030), &[1030]));
        let grads = {
            let _on = equimodal::autograd::loss_scaling(scaled.loss_scale());
            two_pass_grads(&scaled_w, &x, &y)
        };
        let plain_grads = two_pass_grads(&plain_w, &x, &y);
        assert_eq!(grads.get(&scaled_w.tensor).unwrap().to_vec().unwrap(), plain_grads.get(&plain_w.tensor).unwrap().to_vec().unwrap(), "step {step}: the gradients the caller sees");
        scaled.step(&grads).unwrap();
        plain.step(&plain_grads).unwrap();
        assert_eq!(scaled_w.tensor.to_vec().unwrap(), plain_w.tensor.to_vec().unwrap(), "step {step}: parameters");
        assert_eq!(scaled.scale(), 65536.0 * 2f32.powi((step + 1) / 2), "step {step}: the scale doubles every 2 good steps");
    }
    assert_eq!(scaled.take_counts(), ScaleCounts { steps: 4, skipped: 0 });
    assert_eq!(scaled.take_counts(), ScaleCounts::default(), "the counts restart after each read");
    // the guard is gone: the backward of a loss is its own again
    let grads = two_pass_grads(&scaled_w, &upload(&g, &[1.0; 1030], &[1030]), &upload(&g, &[0.0; 1030], &[1030]));
    let w_now = scaled_w.tensor.to_vec().unwrap();
    assert_eq!(grads.get(&scaled_w.tensor).unwrap().to_vec().unwrap(), w_now.iter().map(|v| 2.0 * v).collect::<Vec<f32>>());
}

/// A step whose gradients hold an inf or a NaN (from either of two backward passes) is
/// skipped: parameters and optimizer state unchanged, the scale halved, the skip counted;
/// the next finite step goes through. The scale never falls below 1 or rises above 2^24.
#[test]
fn a_step_with_an_inf_or_nan_gradient_is_skipped_and_halves_the_scale() {
    use equimodal::optim::{GradScaler, ScaleCounts};
    let g = gpu();
    let sgd = SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() };
    let w = param("w", &[1.0, -2.0, 3.0, 0.5, 0.25], &[5]);
    let mut opt = GradScaler::new(&g, Box::new(Sgd::new(&[w.clone()], sgd).unwrap()), 1000).unwrap();
    let ones = upload(&g, &[1.0; 5], &[5]);
    let step = |opt: &mut GradScaler, x: &Tensor, y: &Tensor| {
        let grads = {
            let _on = equimodal::autograd::loss_scaling(opt.loss_scale());
            two_pass_grads(&w, x, y)
        };
        opt.step(&grads).unwrap();
    };
    step(&mut opt, &ones, &ones);
    let (w1, state1) = (w.tensor.to_vec().unwrap(), opt.state_tensors().unwrap());
    for (label, bad) in [("inf", f64::INFINITY), ("nan", f64::NAN), ("-inf", f64::NEG_INFINITY)] {
        // the bad value in the first pass, or in the second
        for first in [true, false] {
            let scale = opt.scale();
            let b = upload(&g, &[0.5, 1.0, bad, 1.0, 1.0], &[5]);
            if first { step(&mut opt, &b, &ones) } else { step(&mut opt, &ones, &b) }
            assert_eq!(w.tensor.to_vec().unwrap(), w1, "{label}: a skipped step changed the parameters");
            let state: Vec<_> = opt.state_tensors().unwrap().into_iter().filter(|e| !e.0.starts_with("loss_scale.")).collect();
            assert_eq!(state, state1.iter().filter(|e| !e.0.starts_with("loss_scale.")).cloned().collect::<Vec<_>>(), "{label}: a skipped step changed the optimizer state");
            assert_eq!(opt.scale(), scale / 2.0, "{label}: the scale backs off");
        }
    }
    assert_eq!(opt.take_counts(), ScaleCounts { steps: 7, skipped: 6 });
    step(&mut opt, &ones, &ones);
    assert_ne!(w.tensor.to_vec().unwrap(), w1, "a finite step after skipped ones applies");
    assert_eq!(opt.take_counts(), ScaleCounts { steps: 1, skipped: 0 }, "the flag is cleared after each step");
    // bounds: 2^16 halves to 1 and stays there; interval 1 doubles it up to 2^24 and no further
    let nan = upload(&g, &[f64::NAN; 5], &[5]);
    for _ in 0..20 {
        step(&mut opt, &nan, &ones);
    }
    assert_eq!(opt.scale(), 1.0);
    let mut fast = GradScaler::new(&g, Box::new(Sgd::new(&[w.clone()], sgd).unwrap()), 1).unwrap();
    for _ in 0..10 {
        step(&mut fast, &ones, &ones);
    }
    assert_eq!(fast.scale(), 16_777_216.0);
    let Err(Error::Config { field, .. }) = GradScaler::new(&g, Box::new(Sgd::new(&[w.clone()], sgd).unwrap()), 0) else { panic!("interval 0 must be refused") };
    assert_eq!(field, "train.loss_scale_interval");
}

/// The scale and the growth tracker travel with the optimizer state (a resume continues the
/// schedule exactly); a checkpoint without them starts afresh; a bad entry is a typed error
/// naming it that changes nothing.
#[test]
fn the_loss_scale_round_trips_through_the_optimizer_state() {
    use equimodal::optim::GradScaler;
    let g = gpu();
    let sgd = SgdConfig { lr: 0.1, momentum: 0.9, ..Default::default() };
    let make = |w: &Param| GradScaler::new(&g, Box::new(Sgd::new(&[w.clone()], sgd).unwrap()), 3).unwrap();
    let w = param("w", &[1.0, 2.0], &[2]);
    let mut opt = make(&w);
    let x = upload(&g, &[1.0, 1.0], &[2]);
    for _ in 0..4 {
        let grads = {
            let _on = equimodal::autograd::loss_scaling(opt.loss_scale());
            two_pass_grads(&w, &x, &x)
        };
        opt.step(&grads).unwrap();
    }
    let state = opt.state_tensors().unwrap();
    let entry = |s: &[StateTensor], n: &str| s.iter().find(|e| e.0 == n).map(|e| e.2.clone());
    assert_eq!(entry(&state, "loss_scale.scale"), Some(vec![131072.0]), "one doubling after 3 good steps");
    assert_eq!(entry(&state, "loss_scale.growth_tracker"), Some(vec![1.0]));
    let mut back = make(&param("w", &[1.0, 2.0], &[2]));
    back.load_state_tensors(&state).unwrap();
    assert_eq!((back.scale(), back.state_tensors().unwrap()), (opt.scale(), state.clone()));
    // without the two entries (a checkpoint from before loss scaling): a fresh scale
    let old: Vec<StateTensor> = state.iter().filter(|e| !e.0.starts_with("loss_scale.")).cloned().collect();
    let mut fresh = make(&param("w", &[1.0, 2.0], &[2]));
    fresh.load_state_tensors(&old).unwrap();
    assert_eq!(fresh.scale(), 65536.0);
    // bad entries
    for (name, value) in [("loss_scale.scale", 3.0), ("loss_scale.scale", 0.5), ("loss_scale.scale", f32::INFINITY), ("loss_scale.growth_tracker", 1.5), ("loss_scale.growth_tracker", -1.0)] {
        let bad: Vec<StateTensor> = state.iter().map(|e| if e.0 == name { (e.0.clone(), e.1.clone(), vec![value]) } else { e.clone() }).collect();
        let mut target = make(&param("w", &[1.0, 2.0], &[2]));
        let before = target.state_tensors().unwrap();
        let Err(Error::Config { field, .. }) = target.load_state_tensors(&bad) else { panic!("{name} = {value} must be refused") };
        assert_eq!(field, name);
        assert_eq!(target.state_tensors().unwrap(), before, "{name} = {value}: a refused load changed the state");
    }
    let half: Vec<StateTensor> = state.iter().filter(|e| e.0 != "loss_scale.growth_tracker").cloned().collect();
    assert!(make(&param("w", &[1.0, 2.0], &[2])).load_state_tensors(&half).is_err(), "one entry without the other");
}
