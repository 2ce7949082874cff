//! `completions SHELL`: the shell's completion script, from the same definitions as `--help`.
//!
//! Bash's script from clap_complete 4.6 completes nothing after a subcommand when the binary's
//! name has a hyphen (clap-rs/clap#6421, open): the loop that finds the subcommand spells the
//! state `mcp__sidecar__subcmd__tools`, the `case` arms `mcp__subcmd__sidecar__subcmd__tools`, so
//! no arm ever matches. The arms are respelled the loop's way (issue 23.10). zsh's script has
//! a problem of its own with the proxy's optional URL before the commands (see [`zsh`]), and
//! fish's completes no positional's values (see [`fish`]).

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// The binary's name, as the shells complete it.
const BIN: &str = "mcp-sidecar";

/// The completion script for `shell`.
pub fn script(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), BIN, &mut out);
    let text = String::from_utf8_lossy(&out);
    match shell {
        Shell::Bash => bash(&text).into_bytes(),
        Shell::Zsh => zsh(&text).into_bytes(),
        Shell::Fish => fish(&text).into_bytes(),
        _ => out,
    }
}

/// fish's script completes no positional's values (`completions <TAB>` offered file names):
/// a line for each positional of a command that has a fixed set of them.
fn fish(text: &str) -> String {
    let mut out = text.to_owned();
    let guard = BIN.replace('-', "_");
    for command in Cli::command().get_subcommands() {
        for arg in command.get_positionals() {
            let values: Vec<String> =
                arg.get_possible_values().iter().map(|v| v.get_name().to_owned()).collect();
            if !values.is_empty() {
                out.push_str(&format!(
                    "complete -c {BIN} -n \"__fish_{guard}_using_subcommand {}\" -f -a \"{}\"\n",
                    command.get_name(),
                    values.join(" ")
                ));
            }
        }
    }
    out
}

/// See the module's documentation.
fn bash(text: &str) -> String {
    // The arms' spelling of the binary's name, and the loop's.
    let (arms, state) = (BIN.replace('-', "__subcmd__"), BIN.replace('-', "__"));
    text.replace(&format!("{arms}__subcmd__"), &format!("{state}__subcmd__"))
}

/// zsh's script gives the top level an optional positional (the proxy's URL) before the
/// command, and dispatches on the second word: the first word typed was taken for the URL, so
/// `install --cl` completed the proxy's options instead of install's and `completions ` offered
/// the commands again. Without that positional (a URL is completed as any word) the command is
/// the first word, as it is for the parser (issue 23.10).
fn zsh(text: &str) -> String {
    let commands = format!("\":: :_{BIN}_commands\" \\");
    let mut lines: Vec<&str> = text.lines().collect();
    if let Some(at) = lines.iter().position(|l| *l == commands)
        && at > 0
        && lines[at - 1].starts_with("'::url -- ")
    {
        lines.remove(at - 1);
    }
    let mut out = lines.join("\n").replace("$line[2]", "$line[1]");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue23_10_bash_arms_are_spelled_as_the_loop_spells_the_state() {
        let text = String::from_utf8(script(Shell::Bash)).unwrap();
        assert!(text.contains(r#"cmd="mcp__sidecar__subcmd__tools""#));
        assert!(text.contains("        mcp__sidecar__subcmd__tools)"), "the arm for tools");
        assert!(!text.contains("mcp__subcmd__sidecar"));
        // fish's gains a line for the shells of `completions`, and is otherwise clap's.
        let mut fish = Vec::new();
        clap_complete::generate(Shell::Fish, &mut Cli::command(), BIN, &mut fish);
        let ours = String::from_utf8(script(Shell::Fish)).unwrap();
        let added = ours.strip_prefix(std::str::from_utf8(&fish).unwrap()).unwrap();
        assert!(
            added.contains(r#"using_subcommand completions" -f -a "bash elvish fish powershell zsh""#),
            "{added}"
        );
    }

    #[test]
    fn issue23_10_zsh_dispatches_on_the_first_word() {
        let text = String::from_utf8(script(Shell::Zsh)).unwrap();
        let top = &text[..text.find(r#"":: :_mcp-sidecar_commands""#).unwrap()];
        let last_spec = top.lines().last().unwrap();
        assert!(!last_spec.starts_with("'::url"), "{last_spec}");
        assert!(text.contains("case $line[1] in") && !text.contains("$line[2]"));
    }
}
