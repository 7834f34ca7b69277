//! Colour for people, never for machines: `--color auto` (the default)
//! colours stdout and stderr only where each is a terminal and `NO_COLOR`
//! is unset or empty (no-color.org); `--color always` and `--color never`
//! decide for both. `--json` never gets colour. Plan lines `+` green, `-`
//! red, `~` yellow; the error prefix red (warnings from the log are yellow).

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, Ordering};

/// `--color`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    /// Always (even through a pipe, and despite NO_COLOR).
    Always,
    /// Never.
    Never,
}

static STDOUT: AtomicBool = AtomicBool::new(false);
static STDERR: AtomicBool = AtomicBool::new(false);

/// Decides, once per process, whether stdout and stderr get colour.
pub fn init(choice: ColorChoice, json: bool) {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let decide = |tty: bool| match choice {
        _ if json => false,
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => tty && !no_color,
    };
    STDOUT.store(decide(std::io::stdout().is_terminal()), Ordering::Relaxed);
    STDERR.store(decide(std::io::stderr().is_terminal()), Ordering::Relaxed);
}

/// `--color` as given on a command line clap refused (so the usage error
/// is coloured as asked); `auto` if absent or unreadable.
pub fn choice_in_args() -> ColorChoice {
    let args: Vec<String> = std::env::args().collect();
    let mut value = None;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--color=") {
            value = Some(v.to_string());
        } else if a == "--color" {
            value = args.get(i + 1).cloned();
        }
    }
    match value.as_deref() {
        Some("always") => ColorChoice::Always,
        Some("never") => ColorChoice::Never,
        _ => ColorChoice::Auto,
    }
}

pub fn on_stdout() -> bool {
    STDOUT.load(Ordering::Relaxed)
}

pub fn on_stderr() -> bool {
    STDERR.load(Ordering::Relaxed)
}

const RED: &str = "\x1b[31m";
const BOLD_RED: &str = "\x1b[1;31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

fn paint(on: bool, code: &str, text: &str) -> String {
    if on {
        format!("{code}{text}{RESET}")
    } else {
        text.to_string()
    }
}

/// `stagehand: error:`, red on a coloured stderr.
pub fn error_prefix() -> String {
    paint(on_stderr(), BOLD_RED, "stagehand: error:")
}

/// A plan line for stdout: `+ …` green, `- …` red, `~ …` yellow, others as they are.
pub fn plan_line(line: &str) -> String {
    plan_line_for(on_stdout(), line)
}

fn plan_line_for(on: bool, line: &str) -> String {
    let code = match line.trim_start().chars().next() {
        Some('+') => GREEN,
        Some('-') => RED,
        Some('~') => YELLOW,
        _ => return line.to_string(),
    };
    paint(on, code, line)
}

/// A history outcome for stdout: finished green, rolled back yellow.
pub fn outcome(name: &str) -> String {
    let code = if name.starts_with("rolled back") { YELLOW } else { GREEN };
    paint(on_stdout(), code, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_lines_are_painted_by_their_sign() {
        assert_eq!(plan_line_for(true, "+ demo sha256:aa"), "\x1b[32m+ demo sha256:aa\x1b[0m");
        assert_eq!(plan_line_for(true, "- demo"), "\x1b[31m- demo\x1b[0m");
        assert_eq!(plan_line_for(true, "  ~ demo a -> b"), "\x1b[33m  ~ demo a -> b\x1b[0m");
        assert_eq!(plan_line_for(true, "= demo kept"), "= demo kept");
        assert_eq!(plan_line_for(false, "+ demo"), "+ demo");
    }
}
