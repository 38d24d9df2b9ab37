//! One layer's state in a pull, as Docker words it, and the milestones
//! Docker always prints on the way.

/// One layer's state, as Docker words it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum State {
    /// Created, not yet admitted: not shown. Docker says "Waiting" only
    /// for a download the concurrency limit holds back.
    Pending,
    Waiting,
    Downloading {
        current: u64,
        total: u64,
    },
    Retrying {
        seconds: u64,
    },
    Verifying,
    DownloadComplete,
    Extracting,
    Complete,
    AlreadyExists,
}

impl State {
    pub(super) fn status(&self) -> String {
        match self {
            State::Pending | State::Waiting => "Waiting".into(),
            State::Downloading { .. } => "Downloading".into(),
            State::Retrying { seconds } => format!("Retrying in {seconds} seconds"),
            State::Verifying => "Verifying Checksum".into(),
            State::DownloadComplete => "Download complete".into(),
            State::Extracting => "Extracting".into(),
            State::Complete => "Pull complete".into(),
            State::AlreadyExists => "Already exists".into(),
        }
    }

    /// How far along a layer's download this state is: Docker says
    /// "Verifying Checksum" and "Download complete" for every layer it
    /// downloads, in that order, before "Pull complete".
    fn rank(&self) -> u8 {
        match self {
            State::Verifying => 1,
            State::DownloadComplete => 2,
            State::Extracting => 3,
            State::Complete => 4,
            _ => 0,
        }
    }

    /// This state, after the milestones (verifying, download complete)
    /// passed since `last` was said.
    pub(super) fn with_missed(self, last: Option<&State>) -> Vec<State> {
        let said = last.map_or(0, State::rank);
        let mut states: Vec<State> = [State::Verifying, State::DownloadComplete]
            .into_iter()
            .filter(|m| m.rank() > said && m.rank() < self.rank())
            .collect();
        states.push(self);
        states
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn milestones_passed_unseen_are_said_in_order() {
        let said = |s: Vec<State>| s.iter().map(State::status).collect::<Vec<_>>();
        assert_eq!(
            said(State::Complete.with_missed(Some(&State::Downloading {
                current: 1,
                total: 2
            }))),
            ["Verifying Checksum", "Download complete", "Pull complete"]
        );
        assert_eq!(
            said(State::Extracting.with_missed(Some(&State::Verifying))),
            ["Download complete", "Extracting"]
        );
        assert_eq!(
            said(State::Complete.with_missed(Some(&State::Extracting))),
            ["Pull complete"]
        );
        assert_eq!(said(State::Waiting.with_missed(None)), ["Waiting"]);
    }
}
