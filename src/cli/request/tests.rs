use super::*;
use clap::Parser;

fn parse(args: &[&str]) -> Result<Request, String> {
    let cli = Cli::try_parse_from(std::iter::once("ssh-ec2").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    from_cli(cli)
}

#[test]
fn options_end_at_the_first_command_word_like_ssh() {
    let request = parse(&["--stop", "ls", "-la", "--leave"]).unwrap();
    assert_eq!(request.command.as_deref(), Some("ls -la --leave"));
    assert_eq!(request.flags.final_state, Some(EndOfLife::Stop));
    assert_eq!(
        parse(&["--", "-x", "y"]).unwrap().command.as_deref(),
        Some("-x y")
    );
    assert!(
        parse(&["--frobnicate", "true"]).is_err(),
        "an unknown option is not a command"
    );
    assert_eq!(parse(&[]).unwrap().command, None);
    let request = parse(&[
        "-L8888:localhost:8888",
        "-L",
        "1:h:2",
        "-R",
        "9:localhost:9",
        "jupyter",
    ])
    .unwrap();
    assert_eq!(
        (request.local_forwards.len(), request.remote_forwards.len()),
        (2, 1)
    );
    assert_eq!(request.command.as_deref(), Some("jupyter"));
    let request = parse(&[
        "-e",
        "A=1",
        "--env",
        "B",
        "--env-file",
        "run.env",
        "--allow-secret-env",
        "env",
    ])
    .unwrap();
    assert_eq!(request.flags.env.unwrap().names(), "A,B");
    assert_eq!(request.env_files, [std::path::PathBuf::from("run.env")]);
    assert!(request.allow_secret_env);
    assert_eq!(request.command.as_deref(), Some("env"));
    assert!(parse(&["-e", "A-B=1", "true"]).is_err());
}

#[test]
fn one_mode_per_invocation() {
    let mode = |args: &[&str]| parse(args).map(|r| r.mode);
    let instance = |mode| Ok(Mode::Instance(mode));
    assert_eq!(mode(&["make"]), instance(InstanceMode::Run));
    assert_eq!(
        mode(&["--setup", "--dry-run"]),
        Ok(Mode::Setup { dry_run: true })
    );
    assert_eq!(
        mode(&["--dry-run", "make"]),
        instance(InstanceMode::DryRun { json: false })
    );
    assert_eq!(
        mode(&["--finish", "--no-attach"]),
        instance(InstanceMode::Finish { attach: false })
    );
    assert_eq!(
        mode(&["--down", "--force"]),
        instance(InstanceMode::Down { force: true })
    );
    assert_eq!(
        mode(&["--logs", "-f", "--node", "1"]),
        instance(InstanceMode::Logs {
            follow: true,
            node: 1
        })
    );
    assert_eq!(
        mode(&["--logs"]),
        instance(InstanceMode::Logs {
            follow: false,
            node: 0
        })
    );
    assert_eq!(
        mode(&["-a", "--node", "2"]),
        instance(InstanceMode::Attach { node: 2 })
    );
    assert_eq!(
        mode(&["--gc", "--yes", "--all-regions"]),
        Ok(Mode::Fleet(FleetMode::Gc {
            yes: true,
            all_regions: true
        }))
    );
    for refused in [
        &["--down", "--dry-run"][..],
        &["--list", "--gc"],
        &["--down", "--stop"],
        &["--list", "ls"],
        &["--all-regions"],
        &["--json"],
        &["--force", "true"],
        &["--follow"],
        &["--node", "1"],
        &["--finish", "--node", "1"],
        &["--logs", "--detach", "true"],
        &["--logs", "--dry-run"],
    ] {
        assert!(mode(refused).is_err(), "{refused:?}");
    }
    assert!(
        mode(&["--attach", "ls"])
            .unwrap_err()
            .contains("take no command")
    );
    assert!(mode(&["--logs", "ls"]).is_err());
    assert!(mode(&["--detach"]).unwrap_err().contains("needs a command"));
}
