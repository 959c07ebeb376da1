use burn::tensor::{Int, Tensor, TensorData};
use nexttoken_model::softmax;

/// Greedy selection, left on the device: the most probable id of each row (`[b, 1]`), after a
/// softmax over the vocabulary.
///
/// The softmax does not change which id is largest; it is here because the probabilities are
/// what a sampler would draw from, and keeping the step explicit keeps the loop the book's.
///
/// # Shapes
/// - logits: `[b, v]` -> `[b, 1]`
pub(crate) fn greedy_ids(logits: Tensor<2>) -> Tensor<2, Int> {
    softmax(logits).argmax(1)
}

/// The argmax's ids read back: indices below the vocabulary size, which fit in u32 for any
/// real vocabulary.
pub(crate) fn ids_of(data: &TensorData) -> Vec<u32> {
    data.iter::<i64>().map(|id| id as u32).collect()
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    #[test]
    fn picks_the_largest_logit_of_each_row() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data([[0.1, 2.0, -1.0, 1.9], [5.0, 4.0, 3.0, 4.5]], &device);
        assert_eq!(ids_of(&greedy_ids(logits).into_data()), [1, 0]);
    }
}
