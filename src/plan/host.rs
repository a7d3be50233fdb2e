//! What the plan needs to know about this machine and this process, read once.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// This machine's facts, as read at start.
pub struct Host {
    pub cwd: PathBuf,
    pub home: PathBuf,
    pub user_config: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: Option<PathBuf>,
    pub hostname: String,
    pub login_name: Option<String>,
    pub path_var: Option<std::ffi::OsString>,
    pub stdin_is_terminal: bool,
    pub stdout_is_terminal: bool,
    /// In the terminal's foreground process group (not `ssh-ec2 … &`).
    pub in_foreground: bool,
}

impl Host {
    pub fn detect() -> Result<Host> {
        use etcetera::BaseStrategy;
        use std::io::IsTerminal;
        let dirs = etcetera::base_strategy::Xdg::new()
            .context("cannot find your home directory: set HOME")?;
        let home = dirs.home_dir().to_path_buf();
        let login_name = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            });
        Ok(Host {
            cwd: std::env::current_dir().context("cannot read the current directory")?,
            user_config: dirs.config_dir().join("ssh-ec2").join("config.toml"),
            state_dir: dirs
                .state_dir()
                .unwrap_or_else(|| home.join(".local/state"))
                .join("ssh-ec2"),
            home,
            hostname: nix::unistd::gethostname()
                .context("cannot read this machine's host name")?
                .to_string_lossy()
                .into_owned(),
            login_name,
            path_var: std::env::var_os("PATH"),
            stdin_is_terminal: std::io::stdin().is_terminal(),
            stdout_is_terminal: std::io::stdout().is_terminal(),
            in_foreground: nix::unistd::tcgetpgrp(std::io::stdin())
                .is_ok_and(|group| group == nix::unistd::getpgrp()),
            runtime_dir: dirs.runtime_dir(),
        })
    }

    /// Where rsync's relay sockets go: the runtime directory when there is one.
    pub fn socket_dir(&self) -> PathBuf {
        self.runtime_dir
            .as_ref()
            .map_or(self.state_dir.clone(), |d| d.join("ssh-ec2"))
    }

    /// Where this machine's and this directory's settings come from.
    pub fn sources(&self) -> crate::settings::Sources<'static> {
        fn process_env(name: &str) -> Option<String> {
            std::env::var(name).ok()
        }
        crate::settings::Sources {
            user_config: self.user_config.clone(),
            project_config: self.cwd.join(crate::settings::Sources::PROJECT_FILE),
            dot_env: self.cwd.join(crate::settings::Sources::DOT_ENV),
            home: self.home.clone(),
            env: &process_env,
        }
    }
}
