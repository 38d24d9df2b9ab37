//! One layer's state in a pull, and the milestones Docker always prints
//! on the way (the gRPC adapter words them).

/// One layer's state, in the steps Docker shows.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// Created, not yet admitted: not shown. Docker says "Waiting" only
    /// for a download the concurrency limit holds back.
    Pending,
    /// It will be fetched ("Pulling fs layer").
    Announced,
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
    pub(crate) fn with_missed(self, last: Option<&State>) -> Vec<State> {
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
        use State::*;
        assert_eq!(
            Complete.with_missed(Some(&Downloading {
                current: 1,
                total: 2
            })),
            [Verifying, DownloadComplete, Complete]
        );
        assert_eq!(
            Extracting.with_missed(Some(&Verifying)),
            [DownloadComplete, Extracting]
        );
        assert_eq!(Complete.with_missed(Some(&Extracting)), [Complete]);
        assert_eq!(Waiting.with_missed(None), [Waiting]);
    }
}
