//! Shell completions and man pages made from a binary's own clap definitions, so what is
//! packaged cannot drift from what the binary parses.
//!
//! Both binaries parse their arguments with [`parse`]: it accepts one extra, hidden
//! subcommand, `generate-assets --out DIR`, that writes
//! `DIR/completions/{bash/NAME, zsh/_NAME, fish/NAME.fish}` and `DIR/man/*.1` (one page per
//! command and subcommand) and exits. That subcommand is added to the parser only, never to
//! the command the assets are made from: completions and man pages do not mention it
//! (clap_complete would list a merely hidden subcommand). `packaging/build-debs.sh` runs it
//! on the release binaries.

use clap::{Arg, ArgAction, Command};
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// The hidden subcommand's name.
pub const GENERATE: &str = "generate-assets";

/// Parses the process arguments into `T`; on `generate-assets --out DIR` writes the assets
/// of `T`'s command into DIR and exits (0, or 1 with the error on stderr).
pub fn parse<T: clap::Parser>() -> T {
    let generator = Command::new(GENERATE)
        .hide(true)
        .about("Write shell completions and man pages (used when packaging)")
        .arg(
            Arg::new("out")
                .long("out")
                .required(true)
                .value_parser(clap::value_parser!(PathBuf))
                .action(ArgAction::Set),
        );
    let mut parser = T::command().subcommand(generator);
    let mut matches = parser.clone().get_matches();
    if let Some((GENERATE, sub)) = matches.subcommand() {
        let out = sub
            .get_one::<PathBuf>("out")
            .cloned()
            .unwrap_or_else(|| PathBuf::from("."));
        match generate(T::command(), &out) {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("error: generating assets into {}: {e}", out.display());
                std::process::exit(1);
            }
        }
    }
    T::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut parser).exit())
}

/// Writes completions for bash, zsh and fish and a man page per command into `out`;
/// returns the files written.
pub fn generate(cmd: Command, out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_owned();
    let mut written = Vec::new();
    for (shell, dir) in [
        (Shell::Bash, "bash"),
        (Shell::Zsh, "zsh"),
        (Shell::Fish, "fish"),
    ] {
        let dir = out.join("completions").join(dir);
        std::fs::create_dir_all(&dir)?;
        written.push(clap_complete::generate_to(shell, &mut cmd, &name, &dir)?);
    }
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cmd, &man)?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    written.extend(pages);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser)]
    #[command(name = "demo-tool", version, about = "A demo")]
    struct Args {
        #[arg(long, global = true, default_value = "/etc/demo.toml")]
        config: PathBuf,
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        /// Start it.
        Serve,
        /// Tokens.
        Token {
            #[command(subcommand)]
            cmd: TokenCmd,
        },
    }

    #[derive(Subcommand)]
    enum TokenCmd {
        /// Make one.
        Create {
            #[arg(long)]
            ttl: String,
        },
    }

    #[test]
    fn writes_completions_and_a_page_per_command_without_the_generator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = generate(Args::command(), dir.path()).expect("generate");
        let names: Vec<String> = written
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .expect("under out")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "completions/bash/demo-tool.bash",
                "completions/zsh/_demo-tool",
                "completions/fish/demo-tool.fish",
                "man/demo-tool-serve.1",
                "man/demo-tool-token-create.1",
                "man/demo-tool-token.1",
                "man/demo-tool.1",
            ]
        );
        for p in &written {
            let text = std::fs::read_to_string(p).expect("read");
            assert!(
                !text.contains(GENERATE),
                "{} mentions {GENERATE}",
                p.display()
            );
        }
        let bash = std::fs::read_to_string(&written[0]).expect("bash");
        assert!(bash.contains("--ttl") && bash.contains("serve"), "{bash}");
        let page =
            std::fs::read_to_string(dir.path().join("man/demo-tool-token-create.1")).expect("page");
        assert!(page.contains(".TH demo-tool-token-create 1"), "{page}");
        assert!(page.contains("\\-\\-ttl"), "{page}");
    }
}
