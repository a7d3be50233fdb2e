//! The documentation agrees with the binary: every flag `--help` lists is in docs/ (its group a
//! heading of docs/usage.md), every setting `--show-config` knows is in docs/configuration.md,
//! and every relative link of README.md and docs/ leads to a file, and heading, that exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::{Project, Run};

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page of docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repository().join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages.push(repository().join("README.md"));
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `ssh-ec2 ARGS` in an empty project with a clean environment; its stdout.
fn ssh_ec2(args: &[&str]) -> String {
    let project = Project::new();
    let run = Run::of(project.ssh_ec2_without_cloud().args(args));
    run.assert_code(0);
    run.stdout
}

/// The options of `--help` (long, or short when it has no long one) under each group heading.
fn help_options() -> Vec<(String, Vec<String>)> {
    let help = ssh_ec2(&["--help"]);
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for line in help.lines().take_while(|line| *line != "Examples:") {
        let option = line.trim_start();
        if !line.starts_with(' ') && line.ends_with(':') {
            groups.push((line.trim_end_matches(':').to_string(), Vec::new()));
        } else if option.starts_with('-') && line.len() - option.len() <= 6 {
            let names = option.split(" <").next().unwrap().trim_end_matches("...");
            let name = names.rsplit(", ").next().unwrap().to_string();
            groups
                .last_mut()
                .expect("an option under a heading")
                .1
                .push(name);
        }
    }
    groups
}

/// Whether `text` names `flag` as a whole (`--spot` is not in `--spot-only`).
fn names_flag(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(at, _)| {
        let next = text[at + flag.len()..].chars().next();
        let before = text[..at].chars().next_back();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

#[test]
fn every_option_of_help_is_documented_under_its_group() {
    let docs: String = pages().iter().map(|page| read(page)).collect();
    let usage = read(&repository().join("docs/usage.md"));
    let groups = help_options();
    assert!(groups.len() > 5, "the groups of --help: {groups:?}");
    let mut missing = Vec::new();
    for (group, options) in &groups {
        if group != "Options" && !usage.lines().any(|l| l == format!("### {group}")) {
            missing.push(format!("the heading `### {group}` in docs/usage.md"));
        }
        for option in options {
            if !names_flag(&docs, option) {
                missing.push(format!("{option} (group {group})"));
            }
        }
    }
    assert!(missing.is_empty(), "not in the docs: {missing:#?}");
}

#[test]
fn every_setting_is_documented_in_configuration() {
    let shown = ssh_ec2(&["--show-config"]);
    let settings: Vec<&str> = shown
        .lines()
        .skip_while(|line| !line.starts_with("SETTING"))
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(settings.contains(&"instance_type"), "{shown}");
    let configuration = read(&repository().join("docs/configuration.md"));
    let missing: Vec<&&str> = settings
        .iter()
        .filter(|key| {
            !configuration.contains(&format!("`{key}`"))
                && !configuration.contains(&format!("`[{key}]`"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md: {missing:?}"
    );
}

/// The lines of `text` outside fenced code blocks.
fn prose(text: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    text.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The targets of the `[text](target)` links of `text`.
fn links(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(text) {
        for (at, _) in line.match_indices("](") {
            let rest = &line[at + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].to_string());
            }
        }
    }
    targets
}

/// The anchors GitHub gives the headings of `text`: lower case, spaces made hyphens, what is
/// neither a letter, a digit, `-` nor `_` dropped; a repeated one gets `-1`, `-2`…
fn anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    for heading in prose(text).filter_map(|line| line.strip_prefix('#')) {
        let title = heading.trim_start_matches('#').trim().to_lowercase();
        let slug: String = (title.chars())
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let unique = (0..)
            .map(|n| match n {
                0 => slug.clone(),
                n => format!("{slug}-{n}"),
            })
            .find(|candidate| !anchors.contains(candidate))
            .unwrap();
        anchors.insert(unique);
    }
    anchors
}

/// What is wrong with the link `target` of `page`, if anything.
fn broken(page: &Path, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
    let linked = match file {
        "" => page.to_path_buf(),
        file => page.parent().unwrap().join(file),
    };
    if !linked.exists() {
        return Some(format!("{target}: no file {}", linked.display()));
    }
    let is_page = linked.extension().is_some_and(|e| e == "md");
    if anchor.is_empty() || !is_page || anchors(&read(&linked)).contains(anchor) {
        return None;
    }
    Some(format!("{target}: no heading #{anchor}"))
}

#[test]
fn every_relative_link_leads_to_a_file_and_heading_that_exist() {
    let mut broken_links = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for target in links(&read(&page)) {
            checked += 1;
            if let Some(why) = broken(&page, &target) {
                broken_links.push(format!("{}: {why}", page.display()));
            }
        }
    }
    assert!(checked > 50, "only {checked} links found");
    assert!(broken_links.is_empty(), "{broken_links:#?}");
}

#[test]
fn anchors_are_spelled_as_github_spells_them() {
    let headings = "# Your instances: --list, --down, --gc\n```\n# not a heading\n```\n\
                    ## The `.env` file\n## Jobs\n### Jobs\n";
    let expected = [
        "your-instances---list---down---gc",
        "the-env-file",
        "jobs",
        "jobs-1",
    ];
    assert_eq!(anchors(headings), expected.map(str::to_string).into());
    assert!(names_flag("`--spot`, `--spot-only`", "--spot"));
    assert!(!names_flag("`--spot-only`", "--spot"));
    assert!(!names_flag("`--no-attach`", "--attach"));
}

/// `text` with each run of white space made one space: a quote may be wrapped in the page.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn troubleshooting_quotes_what_ssh_ec2_says() {
    let page = one_line(&read(&repository().join("docs/troubleshooting.md")));
    let project = Project::new();
    let quoted = |run: Run| {
        assert_eq!(run.code, Some(255), "{run}");
        // As the page spells them: a home of /home/me, a project of /home/me/proj.
        let said = (run.stderr)
            .replace(&project.path().display().to_string(), "/home/me/proj")
            .replace(&project.home().display().to_string(), "/home/me");
        let said = said
            .trim_end()
            .strip_prefix("ssh-ec2: error: ")
            .unwrap_or(&said);
        assert!(
            page.contains(&one_line(said)),
            "not in docs/troubleshooting.md: {said}"
        );
    };
    let ssh_ec2 = || project.ssh_ec2_without_cloud();
    quoted(Run::of(ssh_ec2().args(["--stop", "--spot", "true"])));
    quoted(Run::of(ssh_ec2().args(["--preset", "big", "true"])));
    quoted(Run::of(ssh_ec2().current_dir(project.home()).arg("true")));
    project.write(".ssh-ec2.toml", "instance_typ = \"g5.xlarge\"\n");
    quoted(Run::of(ssh_ec2().arg("--show-config")));
}

/// The fenced code blocks of the section `heading` of `text`, one line each.
fn commands_under(text: &str, heading: &str) -> Vec<String> {
    let section = text.split(&format!("\n{heading}\n")).nth(1).expect(heading);
    let section = section.split("\n## ").next().unwrap();
    let mut lines = Vec::new();
    for block in section.split("```").skip(1).step_by(2) {
        lines.extend(
            block
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    lines
}

#[test]
fn the_front_page_is_short_sets_up_in_two_commands_and_links_every_page() {
    let readme = read(&repository().join("README.md"));
    let headings: Vec<&str> = readme.lines().filter(|l| l.starts_with("## ")).collect();
    for wanted in [
        "## Try it",
        "## Install",
        "## The five commands you use",
        "## What it promises",
    ] {
        assert!(headings.contains(&wanted), "{wanted} in {headings:?}");
    }
    assert!(readme.lines().count() < 250, "the front page is short");
    // ./try-it is tests/it/tryit.rs's; the tests' command is CI's, word for word.
    let setup: Vec<String> = commands_under(&readme, "## Try it")
        .iter()
        .map(|line| line.split(" #").next().unwrap().trim().to_string())
        .collect();
    let ci = read(&repository().join(".ci/run"));
    assert_eq!(setup.len(), 2, "{setup:?}");
    assert_eq!(setup[0], "./try-it", "{setup:?}");
    assert!(ci.lines().any(|line| line == setup[1]), "{setup:?}\n{ci}");
    let five = readme.split("## The five commands you use").nth(1).unwrap();
    let five = five.split("\n## ").next().unwrap();
    assert_eq!(
        five.lines().filter(|l| l.starts_with("| `ssh-ec2")).count(),
        5
    );
    for page in pages().iter().filter(|p| !p.ends_with("README.md")) {
        let name = page.file_name().unwrap().to_str().unwrap();
        assert!(
            readme.contains(&format!("](docs/{name})")),
            "README links {name}"
        );
    }
}
