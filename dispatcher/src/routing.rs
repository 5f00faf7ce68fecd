//! Which version of a model an unpinned request goes to: the routing rule, without I/O.
//!
//! The rule, given the model's versions in the catalog (with the live R hosts of the
//! workers announcing each) and the model's weights in the traffic file:
//! 1. weights set for the model: among the weighted versions that have live hosts, in
//!    proportion to their weights (blue/green, canary); when none of them is live, rule 2;
//! 2. among the versions with live hosts, in proportion to their live hosts, so that a
//!    Kubernetes rolling update of the workers moves traffic pod by pod; a worker's hosts
//!    count only for the highest version of the model it holds (the one it scores an
//!    unpinned request with), so a worker holding versions 1 and 2 sends unpinned
//!    traffic to 2, and 1 is reached by a pin or a weight;
//! 3. no version has live hosts: the highest known version (`compare_versions`), whose
//!    requests wait in its queue for a worker rather than being refused.
//!
//! [`shares`] states the rule as fractions (what `GET /models` shows as `traffic`), and
//! [`pick`] draws from them with a uniform random number, so both are the same rule.

use std::collections::BTreeMap;

use protocol::compare_versions;

/// One version of a model as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    pub version: Option<&'a str>,
    /// R hosts that can score it (a weighted version counts only while it has some).
    pub live_hosts: usize,
    /// Those of its hosts whose worker holds no higher version: what rule 2 weighs.
    pub newest_hosts: usize,
}

impl<'a> From<&'a crate::catalog::Served> for Candidate<'a> {
    fn from(served: &'a crate::catalog::Served) -> Self {
        Candidate {
            version: served.info.version.as_deref(),
            live_hosts: served.live_hosts,
            newest_hosts: served.newest_hosts,
        }
    }
}

/// The fraction of the model's unpinned requests each candidate gets by the rule (in the
/// candidates' order, summing to 1; empty for no candidates).
pub fn shares(candidates: &[Candidate<'_>], weights: Option<&BTreeMap<String, u32>>) -> Vec<f64> {
    let weighted: Vec<f64> = candidates
        .iter()
        .map(|c| {
            let weight = c.version.and_then(|v| weights?.get(v)).copied().unwrap_or(0);
            if c.live_hosts > 0 {
                f64::from(weight)
            } else {
                0.0
            }
        })
        .collect();
    if let Some(shares) = normalized(weighted) {
        return shares;
    }
    if let Some(shares) = normalized(candidates.iter().map(|c| c.newest_hosts as f64).collect()) {
        return shares;
    }
    let highest = candidates.iter().enumerate().max_by(|(_, a), (_, b)| compare_versions(a.version, b.version));
    let mut shares = vec![0.0; candidates.len()];
    if let Some((i, _)) = highest {
        shares[i] = 1.0;
    }
    shares
}

/// `values` scaled to sum to 1, when their sum is positive.
fn normalized(values: Vec<f64>) -> Option<Vec<f64>> {
    let total: f64 = values.iter().sum();
    (total > 0.0).then(|| values.into_iter().map(|v| v / total).collect())
}

/// The index whose share `draw` (uniform in [0, 1)) falls in; `None` when all shares are 0.
pub fn pick(shares: &[f64], draw: f64) -> Option<usize> {
    let mut cumulative = 0.0;
    for (i, share) in shares.iter().enumerate() {
        cumulative += share;
        if *share > 0.0 && draw < cumulative {
            return Some(i);
        }
    }
    // Rounding can leave the last cumulative sum just below 1.
    shares.iter().rposition(|share| *share > 0.0)
}

/// The candidate an unpinned request goes to, by the rule, for the random number `draw`.
pub fn route(candidates: &[Candidate<'_>], weights: Option<&BTreeMap<String, u32>>, draw: f64) -> Option<usize> {
    pick(&shares(candidates, weights), draw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `versions`: (version, live hosts, of them newest); `weights`: (version, weight); `expected`: the
    /// share of each version in percent. Checked exactly through [`shares`], and by 20,000
    /// seeded draws through [`route`], within 4.5 standard deviations of a binomial count.
    fn check(versions: &[(Option<&str>, usize)], weights: Option<&[(&str, u32)]>, expected: &[f64]) {
        check_newest(&versions.iter().map(|(v, n)| (*v, *n, *n)).collect::<Vec<_>>(), weights, expected);
    }

    fn check_newest(versions: &[(Option<&str>, usize, usize)], weights: Option<&[(&str, u32)]>, expected: &[f64]) {
        let candidates: Vec<Candidate> = versions
            .iter()
            .map(|(version, live_hosts, newest_hosts)| Candidate {
                version: *version,
                live_hosts: *live_hosts,
                newest_hosts: *newest_hosts,
            })
            .collect();
        let weights: Option<BTreeMap<String, u32>> =
            weights.map(|w| w.iter().map(|(v, w)| (v.to_string(), *w)).collect());
        let what = format!("{versions:?} weights {weights:?}");
        let got: Vec<f64> = shares(&candidates, weights.as_ref()).iter().map(|s| (s * 1e6).round() / 1e4).collect();
        assert_eq!(got, expected, "{what}");
        if candidates.is_empty() {
            assert_eq!(route(&candidates, weights.as_ref(), 0.5), None);
            return;
        }
        let n = 20_000;
        let mut rng = fastrand::Rng::with_seed(9);
        let mut counts = vec![0usize; candidates.len()];
        for _ in 0..n {
            counts[route(&candidates, weights.as_ref(), rng.f64()).expect("a version")] += 1;
        }
        for (count, percent) in counts.iter().zip(expected) {
            let p = percent / 100.0;
            let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
            assert!((*count as f64 - mean).abs() <= 4.5 * sd, "{what}: {counts:?} for {expected:?}");
        }
    }

    #[test]
    fn the_rule() {
        // Default: in proportion to live hosts (a rolling update one pod of three in).
        check(&[(Some("1"), 4), (Some("2"), 2)], None, &[66.6667, 33.3333]);
        check(&[(Some("1"), 0), (Some("2"), 3)], None, &[0.0, 100.0]);
        check(&[(None, 1)], None, &[100.0]);
        // Weights: among the weighted versions that are live.
        check(&[(Some("1"), 1), (Some("2"), 5)], Some(&[("1", 90), ("2", 10)]), &[90.0, 10.0]);
        check(&[(Some("1"), 1), (Some("2"), 1), (Some("3"), 1)], Some(&[("1", 90), ("2", 10)]), &[90.0, 10.0, 0.0]);
        check(&[(Some("1"), 0), (Some("2"), 1)], Some(&[("1", 90), ("2", 10)]), &[0.0, 100.0]);
        check(&[(Some("1"), 1), (Some("2"), 1)], Some(&[("1", 0), ("2", 1)]), &[0.0, 100.0]);
        // No weighted version is live: the default rule.
        check(&[(Some("1"), 2), (Some("2"), 0), (Some("3"), 2)], Some(&[("2", 1)]), &[50.0, 0.0, 50.0]);
        // A worker holding 1 and 2 (two hosts) beside one holding only 1 (one host): its
        // hosts count for 2 by default, and for 1 too when weights name it.
        check_newest(&[(Some("1"), 3, 1), (Some("2"), 2, 2)], None, &[33.3333, 66.6667]);
        check_newest(&[(Some("1"), 2, 0), (Some("2"), 2, 2)], None, &[0.0, 100.0]);
        check_newest(&[(Some("1"), 2, 0), (Some("2"), 2, 2)], Some(&[("1", 1)]), &[100.0, 0.0]);
        // Nothing is live: the highest known version, numerically.
        check(&[(Some("9"), 0), (Some("10"), 0), (Some("2"), 0)], None, &[0.0, 100.0, 0.0]);
        check(&[(Some("9"), 0), (Some("10"), 0)], Some(&[("9", 1)]), &[0.0, 100.0]);
        check(&[(None, 0)], None, &[100.0]);
        check(&[], None, &[]);
        // A draw at the end of [0, 1) lands on the last live version despite rounding.
        assert_eq!(pick(&[0.1, 0.2, 0.7, 0.0], 0.999_999_999_999), Some(2));
        assert_eq!(pick(&[0.0, 0.0], 0.5), None);
    }
}
