//! An optimizer that changes nothing and keeps a host copy of each step's gradients, by
//! parameter name: what the method tests compare methods' gradients with.
use equimodal::optim::{Optimizer, Param, StateTensor};
use equimodal::{Gradients, Result};

#[derive(Default)]
pub struct Recorder {
    pub params: Vec<Param>,
    pub steps: Vec<Vec<(String, Vec<f32>)>>,
}

impl Optimizer for Recorder {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let mut step = Vec::new();
        for p in &self.params {
            if let Some(g) = grads.get(&p.tensor) {
                step.push((p.name.clone(), g.to_vec()?));
            }
        }
        self.steps.push(step);
        Ok(())
    }
    fn add_params(&mut self, params: &[Param]) {
        self.params.extend(params.iter().cloned());
    }
    fn params(&self) -> &[Param] {
        &self.params
    }
    fn lr(&self) -> f32 {
        0.0
    }
    fn set_lr(&mut self, _lr: f32) {}
    fn state_tensors(&self) -> Result<Vec<StateTensor>> {
        Ok(Vec::new())
    }
    fn load_state_tensors(&mut self, _state: &[StateTensor]) -> Result<()> {
        Ok(())
    }
}
