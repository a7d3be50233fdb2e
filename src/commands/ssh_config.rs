//! `ssh-ec2 --ssh-config [--install]`: an OpenSSH config block for this directory's instance,
//! so that ssh, scp, sftp and VS Code Remote-SSH reach it with its pinned host key required
//! (`StrictHostKeyChecking yes`), as ssh-ec2 does. `--install` writes it to its own file under
//! `~/.ssh/ssh-ec2/`, which `~/.ssh/config` includes; every run that reaches the instance
//! updates its address there, and the file goes when the instance is terminated.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::cloud::{Cloud, State};
use crate::printer::Printer;
use crate::session::{Plan, ssh_address};
use crate::state::Store;
use crate::state::entries::Entry;
use crate::status::ExitStatus;

pub async fn ssh_config(
    plan: &Plan,
    home: &Path,
    install: bool,
    printer: &Printer,
) -> Result<ExitStatus> {
    let cloud = Cloud::connect(&plan.account).await;
    let store = Store::new(&plan.dirs.root);
    let spec = &plan.machine;
    let nodes = cloud.find_owned(&spec.ownership).await?;
    let instance = nodes.first().with_context(|| {
        format!(
            "this directory has no instance in {}: `ssh-ec2 --leave true` launches one and leaves \
             it running",
            cloud.region
        )
    })?;
    let id = &instance.id;
    if !matches!(instance.state, State::Pending | State::Running) {
        bail!(
            "{id} is {}: `ssh-ec2 --leave true` starts it (with a new address), then ask again",
            instance.state.as_str()
        );
    }
    let address = ssh_address(&plan.reach.dial, instance)?;
    let user = crate::fleet::login_user(spec, instance);
    let entry = Entry {
        local_dir: &plan.local_dir,
        login: &spec.login,
        id,
        user: &user,
        address: &address,
    };
    if !install {
        printer.out(store.ssh_config_block(&entry)?)?;
        return Ok(ExitStatus::Success);
    }
    let installed = store.install_ssh_config_entry(&entry, home)?;
    printer.info(&format!(
        "`ssh {}` (and scp, sftp, VS Code Remote-SSH) now reach {id}: its entry is {}, \
         included by {}, and goes when {id} is terminated",
        installed.alias,
        installed.entry.display(),
        installed.config.display()
    ));
    Ok(ExitStatus::Success)
}
