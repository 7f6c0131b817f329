//! Initialisation schemes. Every module is built with the scheme of the official AUG code
//! (kaiming-normal fan_out convolutions, xavier-normal linear layers, zero biases; batch and
//! layer norm 1 / 0); [`reinit`] redraws the convolution and linear parameters of a finished
//! model under another scheme.
use crate::error::Result;
use super::Param;
use rand::rngs::StdRng;
use rand::Rng;

/// `model.init`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Init {
    /// The official AUG code's: conv weights N(0, 2 / (C_out·k·k)), linear weights
    /// N(0, 2 / (in + out)), biases 0.
    #[default]
    Official,
    /// PyTorch's defaults (`nn.Linear` / `nn.Conv2d` `reset_parameters`), what most PyTorch
    /// code and the AV-MNIST reference script get: weight `kaiming_uniform_(a = √5)`, which is
    /// U(−1/√fan_in, 1/√fan_in), and bias U(−1/√fan_in, 1/√fan_in), with fan_in = in_features
    /// or C_in·kH·kW.
    Torch,
}

impl std::str::FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "official" => Ok(Init::Official),
            "torch" => Ok(Init::Torch),
            _ => Err(format!("unknown initialisation {s:?}; allowed: official, torch")),
        }
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Init::Official => "official",
            Init::Torch => "torch",
        })
    }
}

/// Redraw the linear and convolution parameters among `params` under `scheme` (a no-op for
/// [`Init::Official`], the scheme the modules were built with). A linear or convolution
/// weight is a parameter named `<layer>.weight` with 2 (`[out, in]`) or 4
/// (`[C_out, C_in, kH, kW]`) dimensions (the only such parameters `nn` creates; norms have
/// 1-D weights); its bias is `<layer>.bias`. Draws in the order of `params`, so a seed gives
/// the same model every time.
pub fn reinit(scheme: Init, params: &[Param], rng: &mut StdRng) -> Result<()> {
    if scheme == Init::Official {
        return Ok(());
    }
    for w in params {
        let Some(layer) = w.name.strip_suffix(".weight") else { continue };
        let shape = w.tensor.shape();
        if shape.len() != 2 && shape.len() != 4 {
            continue;
        }
        let fan_in: usize = shape[1..].iter().product();
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        w.tensor.write(&uniform(rng, w.tensor.numel(), bound))?;
        let bias = format!("{layer}.bias");
        if let Some(b) = params.iter().find(|p| p.name == bias) {
            b.tensor.write(&uniform(rng, b.tensor.numel(), bound))?;
        }
    }
    Ok(())
}

/// `n` samples of U(−bound, bound).
pub fn uniform(rng: &mut StdRng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
}
