//! This directory: where it is, who owns its instance, and where it goes on the instance.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::host::Host;
use crate::cloud::Owner;
use crate::remote::RemoteDir;
use crate::settings::Values;

/// EC2 tag values hold at most 256 characters.
pub const MAX_TAG_VALUE: usize = 256;

/// The current directory, resolved; refused when syncing it would copy the user's credentials.
pub fn local_dir(host: &Host) -> Result<PathBuf> {
    let local_dir = host.cwd.canonicalize().with_context(|| {
        format!(
            "cannot resolve the current directory {}",
            host.cwd.display()
        )
    })?;
    let home = host
        .home
        .canonicalize()
        .unwrap_or_else(|_| host.home.clone());
    refuse_credentials(&local_dir, &home)?;
    Ok(local_dir)
}

/// A home directory, or anything in ~/.aws or ~/.ssh, would go to the instance with the keys.
fn refuse_credentials(local_dir: &Path, home: &Path) -> Result<()> {
    let credentials = [".aws", ".ssh"].map(|dir| home.join(dir));
    if home.starts_with(local_dir) || credentials.iter().any(|c| local_dir.starts_with(c)) {
        bail!(
            "ssh-ec2 would copy {} to the instance, with your credentials (~/.aws, ~/.ssh): \
             run it from a project directory",
            local_dir.display()
        );
    }
    Ok(())
}

/// The directory as the instance's tag holds it.
pub fn dir_tag(local_dir: &Path) -> Result<String> {
    local_dir
        .to_str()
        .filter(|d| d.len() <= MAX_TAG_VALUE)
        .map(str::to_string)
        .with_context(|| {
            format!(
                "the path {} must be UTF-8 and at most {MAX_TAG_VALUE} bytes to tag the \
                 instance with it: run ssh-ec2 from a shorter path",
                local_dir.display()
            )
        })
}

/// Who owns the instances: TRIGRAM, else the login name; this machine's id tells its own apart.
pub fn owner(values: &Values, host: &Host, machine: String) -> Result<Owner> {
    let name = values
        .trigram
        .clone()
        .or_else(|| host.login_name.clone())
        .context("cannot tell who you are: set TRIGRAM (or USER) to your name")?;
    Ok(Owner {
        name,
        machine,
        host: host.hostname.clone(),
    })
}

/// The directory on the instance: as set, else `~/<this directory's name>`.
pub fn remote_dir(values: &Values, local_dir: &Path) -> Result<RemoteDir> {
    match &values.remote_dir {
        Some(dir) => RemoteDir::parse(dir),
        None => RemoteDir::default_for(local_dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_home_or_credentials_directory_is_refused() {
        let home = Path::new("/home/me");
        for refused in ["/home/me", "/home", "/", "/home/me/.ssh/x", "/home/me/.aws"] {
            let err = refuse_credentials(Path::new(refused), home).unwrap_err();
            assert!(err.to_string().contains("project directory"), "{refused}");
        }
        for allowed in ["/home/me/proj", "/srv/data", "/home/me/.awsome"] {
            assert!(
                refuse_credentials(Path::new(allowed), home).is_ok(),
                "{allowed}"
            );
        }
    }

    #[test]
    fn the_directory_must_fit_a_tag() {
        assert_eq!(dir_tag(Path::new("/w/p")).unwrap(), "/w/p");
        let long = format!("/{}", "x".repeat(MAX_TAG_VALUE));
        assert!(dir_tag(Path::new(&long)).is_err());
    }
}
