//! What a pull has said of each layer. A watch keeps only a layer's
//! latest state, and several layers' watches are read together, so this
//! adds the milestones Docker always prints ([`State::with_missed`]) and
//! holds a layer's end back until every fetched layer below has ended:
//! Docker says "Pull complete" in chain order, as it registers layers.

use super::State;
use super::events::Bytes;

/// The per-layer record of a pull's progress.
pub(super) struct Said {
    /// Per layer: whether it is fetched (the others are not followed).
    fetch: Vec<bool>,
    totals: Vec<u64>,
    all_total: u64,
    /// Per layer: the bytes downloaded so far.
    done: Vec<u64>,
    last: Vec<Option<State>>,
    /// Per layer: its end arrived while a layer below had not ended.
    held: Vec<bool>,
}

impl Said {
    /// For layers planned with `fetch` and `totals` (bytes each).
    pub(super) fn new(fetch: &[bool], totals: &[u64]) -> Self {
        Said {
            fetch: fetch.to_vec(),
            totals: totals.to_vec(),
            all_total: totals.iter().sum(),
            done: vec![0; totals.len()],
            last: vec![None; totals.len()],
            held: vec![false; totals.len()],
        }
    }

    /// What to say now that layer `i` reached `state`, in order.
    pub(super) fn reached(&mut self, i: usize, state: State) -> Vec<(usize, State, Bytes)> {
        let mut out = Vec::new();
        if state == State::Pending {
            return out;
        }
        if state == State::Complete && self.below_unfinished(i) {
            self.held[i] = true;
            return out;
        }
        let ended = state == State::Complete;
        self.say(i, state, &mut out);
        if ended {
            for k in i + 1..self.held.len() {
                if self.held[k] && !self.below_unfinished(k) {
                    self.held[k] = false;
                    self.say(k, State::Complete, &mut out);
                }
            }
        }
        out
    }

    /// The ends not said yet once every layer is in, in chain order.
    pub(super) fn finish(&mut self) -> Vec<(usize, State, Bytes)> {
        let mut out = Vec::new();
        for i in 0..self.fetch.len() {
            if self.fetch[i] && self.last[i] != Some(State::Complete) {
                self.say(i, State::Complete, &mut out);
            }
        }
        out
    }

    fn below_unfinished(&self, i: usize) -> bool {
        (0..i).any(|j| self.fetch[j] && self.last[j] != Some(State::Complete))
    }

    /// Says `state` of layer `i`, after the milestones passed unseen.
    fn say(&mut self, i: usize, state: State, out: &mut Vec<(usize, State, Bytes)>) {
        for state in state.with_missed(self.last[i].as_ref()) {
            let (current, total) = match &state {
                State::Downloading { current, total } => (*current, *total),
                State::Verifying
                | State::DownloadComplete
                | State::Extracting
                | State::Complete => (self.totals[i], self.totals[i]),
                _ => (0, 0),
            };
            self.done[i] = self.done[i].max(current);
            let bytes = Bytes {
                current,
                total,
                all_current: self.done.iter().sum(),
                all_total: self.all_total,
            };
            out.push((i, state.clone(), bytes));
            self.last[i] = Some(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(said: &[(usize, State, Bytes)]) -> Vec<usize> {
        said.iter()
            .filter(|(_, s, _)| *s == State::Complete)
            .map(|(i, _, _)| *i)
            .collect()
    }

    #[test]
    fn a_layer_ends_only_after_every_fetched_layer_below() {
        // Layer 0 is stored; 1, 2 and 3 are fetched.
        let mut said = Said::new(&[false, true, true, true], &[0, 10, 20, 30]);
        assert!(said.reached(3, State::Complete).is_empty());
        assert!(said.reached(2, State::Complete).is_empty());
        let out = said.reached(1, State::Complete);
        assert_eq!(ends(&out), [1, 2, 3]);
        // Each end comes after its milestones.
        let of_two: Vec<State> = out
            .iter()
            .filter(|(i, _, _)| *i == 2)
            .map(|(_, s, _)| s.clone())
            .collect();
        assert_eq!(
            of_two,
            [State::Verifying, State::DownloadComplete, State::Complete]
        );
        assert_eq!(out.last().unwrap().2.all_current, 60);
        assert!(said.finish().is_empty());
    }

    #[test]
    fn ends_never_seen_are_said_at_the_finish_in_order() {
        let mut said = Said::new(&[true, true], &[5, 5]);
        said.reached(1, State::Extracting);
        assert_eq!(ends(&said.finish()), [0, 1]);
    }
}
