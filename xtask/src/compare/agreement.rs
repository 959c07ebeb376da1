//! Whether a backend's outputs agree with the reference's: the same ids, or a flip where the
//! reference's top two were a near-tie, and logits within the tolerance up to and including the
//! first differing step.

use serde::Serialize;

use super::Generated;

/// How one backend's generations compare with the reference's.
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct Agreement {
    pub(super) ids_identical: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) first_difference: Option<Difference>,
    pub(super) logits_max_abs: f32,
    pub(super) logits_mean_abs: f32,
    pub(super) logits_max_relative: f32,
    /// Logits within the tolerance wherever they are comparable. An id can then differ only
    /// where the reference's top two were closer than the logits' noise (a near-tie).
    pub(super) agrees: bool,
}

/// Where the ids first differ, and by how much the reference preferred its own pick there.
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct Difference {
    pub(super) prompt: usize,
    pub(super) step: usize,
    pub(super) reference_margin: f32,
}

/// `ours` against `reference`, prompt by prompt, up to and including the first step whose ids
/// differ (the logits of later steps come from different inputs).
pub(super) fn agreement(reference: &[Generated], ours: &[Generated], tolerance: f32) -> Agreement {
    let mut same_shape = reference.len() == ours.len();
    let (mut max_abs, mut max_relative, mut sum, mut count) = (0f32, 0f32, 0f64, 0usize);
    let mut first_difference = None;
    for (prompt, (theirs, ours)) in reference.iter().zip(ours).enumerate() {
        if theirs.ids.len() != ours.ids.len() || theirs.logits.len() != ours.logits.len() {
            same_shape = false;
            continue;
        }
        let vocab = theirs.logits.len() / theirs.ids.len().max(1);
        let differs_at = theirs.ids.iter().zip(&ours.ids).position(|(a, b)| a != b);
        let compared = differs_at.map_or(theirs.ids.len(), |step| step + 1) * vocab;
        for (&want, &got) in theirs.logits[..compared]
            .iter()
            .zip(&ours.logits[..compared])
        {
            // f32::max skips NaN: a NaN logit must count as the worst difference instead.
            let diff = match (got - want).abs() {
                diff if diff.is_nan() => f32::INFINITY,
                diff => diff,
            };
            max_abs = max_abs.max(diff);
            max_relative = max_relative.max(diff / want.abs().max(1.0));
            sum += f64::from(diff);
            count += 1;
        }
        if let (Some(step), None) = (differs_at, &first_difference) {
            let row = &theirs.logits[step * vocab..(step + 1) * vocab];
            let logit = |id: u32| row.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY);
            first_difference = Some(Difference {
                prompt,
                step,
                reference_margin: logit(theirs.ids[step]) - logit(ours.ids[step]),
            });
        }
    }
    Agreement {
        ids_identical: same_shape && first_difference.is_none(),
        first_difference,
        logits_max_abs: max_abs,
        logits_mean_abs: if count == 0 {
            0.0
        } else {
            (sum / count as f64) as f32
        },
        logits_max_relative: max_relative,
        agrees: same_shape && max_relative <= tolerance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One prompt over a 4-id vocabulary: `rows` of logits, the ids their argmax.
    fn generated(rows: &[[f32; 4]]) -> Vec<Generated> {
        let ids = rows
            .iter()
            .map(|row| {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                best.map_or(0, |(id, _)| id as u32)
            })
            .collect();
        vec![Generated {
            ids,
            logits: rows.concat(),
        }]
    }

    const REFERENCE: [[f32; 4]; 3] = [
        [1.0, 5.0, 2.0, 0.0],
        [3.0, 1.0, 2.0, 9.0],
        [0.5, 0.4, 8.0, 1.0],
    ];

    #[test]
    fn identical_outputs_agree() {
        let reference = generated(&REFERENCE);
        let result = agreement(&reference, &generated(&REFERENCE), 1e-3);
        assert!(result.ids_identical && result.agrees);
        assert_eq!(result.logits_max_abs, 0.0);
    }

    #[test]
    fn small_logit_noise_agrees_and_is_measured() {
        let mut noisy = REFERENCE;
        noisy[1][3] += 4e-3; // 9.0: relative 4.4e-4
        let result = agreement(&generated(&REFERENCE), &generated(&noisy), 1e-3);
        assert!(result.ids_identical && result.agrees, "{result:?}");
        assert!((result.logits_max_abs - 4e-3).abs() < 1e-6);
        assert!((result.logits_mean_abs - 4e-3 / 12.0).abs() < 1e-6);
    }

    #[test]
    fn logits_beyond_the_tolerance_disagree_even_with_the_same_ids() {
        let mut off = REFERENCE;
        off[2][0] += 0.1;
        let result = agreement(&generated(&REFERENCE), &generated(&off), 1e-3);
        assert!(result.ids_identical);
        assert!(!result.agrees);
    }

    #[test]
    fn a_flip_at_a_near_tie_agrees_and_names_the_step() {
        let mut tie = REFERENCE;
        tie[1] = [3.0, 1.0, 8.99995, 9.0];
        let mut flipped = tie;
        flipped[1][2] = 9.00005;
        // After the flip the inputs differ: later logits are not compared.
        flipped[2] = [7.0, 0.0, 0.0, 0.0];
        let result = agreement(&generated(&tie), &generated(&flipped), 1e-3);
        assert!(!result.ids_identical);
        assert!(result.agrees, "{result:?}");
        let difference = result.first_difference.unwrap();
        assert_eq!((difference.prompt, difference.step), (0, 1));
        assert!((difference.reference_margin - 5e-5).abs() < 1e-6);
    }

    #[test]
    fn a_flip_with_logits_far_off_disagrees() {
        let mut wrong = REFERENCE;
        wrong[0][3] = 6.0;
        let result = agreement(&generated(&REFERENCE), &generated(&wrong), 1e-3);
        assert!(!result.ids_identical && !result.agrees);
        assert_eq!(result.first_difference.unwrap().reference_margin, 5.0);
    }

    #[test]
    fn nan_logits_disagree() {
        let mut nan = REFERENCE;
        nan[2][1] = f32::NAN;
        let result = agreement(&generated(&REFERENCE), &generated(&nan), 1e-3);
        assert!(!result.agrees);
        assert_eq!(result.logits_max_abs, f32::INFINITY);
    }

    #[test]
    fn fewer_ids_disagree() {
        let result = agreement(&generated(&REFERENCE), &generated(&REFERENCE[..2]), 1e-3);
        assert!(!result.ids_identical && !result.agrees);
    }
}
