//! How ssh-ec2 ends: one `ExitStatus`, made into the process's exit code in `main` only.

use crate::interrupt::{Interrupted, Signal};
use crate::printer::StdoutClosed;

/// What the process exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    /// The remote command's (or job's) own status.
    Remote(u8),
    /// ssh-ec2 was cut short by a signal: the shell's 128 + its number.
    Signal(Signal),
    /// What was asked would be refused (a dry run's verdict on the launch).
    Refused,
    /// ssh-ec2 itself failed, or the remote command was killed by a signal (as ssh says it).
    Failed,
}

impl ExitStatus {
    /// ssh's convention for "ssh-ec2 itself failed", as opposed to the remote command.
    const FAILURE: u8 = 255;

    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Remote(code) => code,
            ExitStatus::Signal(signal) => signal.exit_code(),
            ExitStatus::Refused => 1,
            ExitStatus::Failed => Self::FAILURE,
        }
    }

    /// A remote status as the shell reports it; a status past 255 cannot be told apart from
    /// a failure.
    pub fn remote(status: u32) -> ExitStatus {
        match u8::try_from(status) {
            Ok(code) => ExitStatus::Remote(code),
            Err(_) => ExitStatus::Failed,
        }
    }

    /// The status of a mode that failed with `error`, and whether the error is still to be
    /// said: output closed by its reader (`ssh-ec2 --list | head -1`) ends quietly, as other
    /// Unix tools do.
    pub fn of_error(error: &anyhow::Error) -> (ExitStatus, bool) {
        if let Some(Interrupted(signal)) = error.downcast_ref::<Interrupted>() {
            return (ExitStatus::Signal(*signal), true);
        }
        match error.chain().any(|cause| cause.is::<StdoutClosed>()) {
            true => (ExitStatus::Success, false),
            false => (ExitStatus::Failed, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_has_its_code() {
        assert_eq!(ExitStatus::Success.code(), 0);
        assert_eq!(ExitStatus::remote(3).code(), 3);
        assert_eq!(ExitStatus::remote(256), ExitStatus::Failed);
        assert_eq!(ExitStatus::Signal(Signal::Interrupt).code(), 130);
        assert_eq!(ExitStatus::Refused.code(), 1);
        assert_eq!(ExitStatus::Failed.code(), 255);
        let (status, say) = ExitStatus::of_error(&Interrupted(Signal::Terminate).into());
        assert_eq!((status, say), (ExitStatus::Signal(Signal::Terminate), true));
        let (status, say) = ExitStatus::of_error(&anyhow::anyhow!("no"));
        assert_eq!((status, say), (ExitStatus::Failed, true));
    }
}
