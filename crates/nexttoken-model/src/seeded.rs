//! Random weights drawn on the host from a seed: the same model on every backend, machine and
//! run. burn's own `init` draws from the backend's generator, which is not seeded, so a test on
//! a random model could not be reproduced.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::{Gpt2, Gpt2Config};

impl Gpt2Config {
    /// A model of this shape with random weights drawn on the host from `seed`, spread as
    /// [`Gpt2Config::init`] spreads them: embeddings with a standard deviation of 1, linear
    /// layers uniform within ±1/√fan-in, layer norms at 1 and 0.
    ///
    /// # Panics
    /// As [`Gpt2Config::init`], for a config that [`Gpt2Config::validate`] refuses.
    pub fn init_seeded(&self, device: &Device, seed: u64) -> Gpt2 {
        seeded(self.init(device), seed)
    }
}

/// `module` with its float parameters drawn from `seed` as [`Gpt2Config::init_seeded`] draws
/// them (for the unit tests' single layers too).
pub(crate) fn seeded<M: Module>(module: M, seed: u64) -> M {
    module.map(&mut Seeded {
        seed,
        drawn: 0,
        containers: Vec::new(),
        fan_in: 1,
    })
}

/// Replaces every float parameter with values from SplitMix64 keyed by the seed, in the order
/// the module visits them.
struct Seeded {
    seed: u64,
    drawn: u64,
    /// The container types entered, innermost last (`Struct:Linear`, ...).
    containers: Vec<String>,
    /// The input width of the linear layer being visited, for its bias (visited after its
    /// `[d_input, d_output]` weight).
    fan_in: usize,
}

impl Seeded {
    /// Uniform on [-1, 1).
    fn next_uniform(&mut self) -> f32 {
        self.drawn += 1;
        let mut z = self
            .seed
            .wrapping_add(self.drawn.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 - 8_388_608.0) / 8_388_608.0
    }
}

impl ModuleMapper for Seeded {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.containers.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let dims = param.val().dims();
        let scale = match self.containers.last().map(String::as_str) {
            Some("Struct:LayerNorm") => return param,
            // Uniform on ±√3 has a standard deviation of 1.
            Some("Struct:Embedding") => 3f32.sqrt(),
            _ => {
                if D == 2 {
                    self.fan_in = dims[0];
                }
                (self.fan_in as f32).sqrt().recip()
            }
        };
        let count = dims.iter().product();
        let values: Vec<f32> = (0..count).map(|_| self.next_uniform() * scale).collect();
        param.map(|tensor| {
            let device = tensor.device();
            Tensor::from_data(TensorData::new(values, dims), &device)
        })
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Int;

    use super::*;
    use crate::model::tests::tiny;

    fn values<const D: usize>(tensor: &Tensor<D>) -> Vec<f32> {
        tensor.clone().into_data().try_to_vec().unwrap()
    }

    /// One seed gives the same weights and logits every time, another seed others; layer norms
    /// keep their 1 and 0; the spreads are burn's.
    #[test]
    fn a_seed_fixes_the_weights() {
        let device = Device::flex();
        let (a, b, c) = (
            tiny().init_seeded(&device, 7),
            tiny().init_seeded(&device, 7),
            tiny().init_seeded(&device, 8),
        );
        assert_eq!(values(&a.wte.weight.val()), values(&b.wte.weight.val()));
        assert_ne!(values(&a.wte.weight.val()), values(&c.wte.weight.val()));
        let ids = || Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
        assert_eq!(values(&a.forward(ids())), values(&b.forward(ids())));
        assert!(values(&a.ln_f.gamma.val()).iter().all(|&g| g == 1.0));
        assert!(
            values(&a.ln_f.beta.as_ref().unwrap().val())
                .iter()
                .all(|&b| b == 0.0)
        );
        let spread = |v: Vec<f32>| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let embedding = spread(values(&a.wte.weight.val()));
        assert!(embedding > 1.5 && embedding <= 3f32.sqrt(), "{embedding}");
        let linear = &a.h[0].mlp.c_proj;
        // [4 · 8, 8]: within ±1/√32, bias too.
        let bound = 32f32.sqrt().recip();
        for v in [
            values(&linear.weight.val()),
            values(&linear.bias.as_ref().unwrap().val()),
        ] {
            let s = spread(v);
            assert!(s > bound / 2.0 && s <= bound, "{s} vs {bound}");
        }
    }
}
