"""jmigctl completion bash|zsh: a completion script made from the parser,
so that it always knows every command and option.  Env ids complete from
`jmigctl ps -q` of the node the command line names (or $JMIG_NODE), node
addresses from $JMIG_NODES and $JMIG_NODE, images from `jmigctl ls`.
zsh uses the same function through bashcompinit."""
from __future__ import annotations

import argparse

ENV_COMMANDS = ("pause", "resume", "kill", "copy", "vmmap", "save", "migrate", "recover", "pin",
                "unpin")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(o for a in parser._actions for o in a.option_strings)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    subs = _subparsers(parser)
    cases = []
    for name, sp in subs.items():
        words = _options(sp)
        inner = _subparsers(sp)
        if inner:
            words = sorted(inner) + words
            for iname, ip in inner.items():
                cases.append(f'    "{name} {iname}") opts="{" ".join(_options(ip))}" ;;')
        cases.append(f'    "{name}") opts="{" ".join(words)}" ;;')
    body = BASH.replace("@COMMANDS@", " ".join(subs)) \
               .replace("@GLOBAL@", " ".join(_options(parser))) \
               .replace("@CASES@", "\n".join(cases)) \
               .replace("@ENVCMDS@", "|".join(ENV_COMMANDS))
    if shell == "zsh":
        return ZSH_HEAD + body
    return body


ZSH_HEAD = """#compdef jmigctl
# jmigctl completion for zsh (through bashcompinit): `jmigctl completion zsh > _jmigctl`
# somewhere on $fpath, or `source <(jmigctl completion zsh)`.
autoload -U +X compinit && compinit
autoload -U +X bashcompinit && bashcompinit
"""

BASH = r"""# jmigctl completion for bash: `source <(jmigctl completion bash)`
_jmigctl_nodes() {
    local n
    for n in ${JMIG_NODES//,/ } $JMIG_NODE; do echo "$n"; done | sort -u
}
_jmigctl() {
    local cur prev cmd sub i node_opt=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    cmd="" sub=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --node|--secret-file) node_opt+=("${COMP_WORDS[i]}" "${COMP_WORDS[i+1]}"); i=$((i+1)) ;;
            -*) ;;
            *) if [[ -z $cmd ]]; then cmd="${COMP_WORDS[i]}"
               elif [[ -z $sub && $cmd == image ]]; then sub="${COMP_WORDS[i]}"; fi ;;
        esac
    done
    case "$prev" in
        --node|--to) COMPREPLY=($(compgen -W "$(_jmigctl_nodes)" -- "$cur")); return ;;
        --nodes) COMPREPLY=($(compgen -W "${JMIG_NODES:-$JMIG_NODE}" -- "$cur")); return ;;
        --secret-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --method) COMPREPLY=($(compgen -W "normal pgfault precopy" -- "$cur")); return ;;
        -o|--output) COMPREPLY=($(compgen -W "table wide json" -- "$cur")); return ;;
    esac
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "@COMMANDS@ @GLOBAL@" -- "$cur"))
        return
    fi
    local opts=""
    case "$cmd${sub:+ $sub}" in
@CASES@
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi
    case "$cmd" in
        @ENVCMDS@)
            COMPREPLY=($(compgen -W "$(jmigctl "${node_opt[@]}" ps -q 2>/dev/null)" -- "$cur")) ;;
        load) COMPREPLY=($(compgen -W "$(jmigctl "${node_opt[@]}" ls 2>/dev/null | awk '$2 == "image" {print $1}')" -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
        image)
            if [[ -z $sub ]]; then COMPREPLY=($(compgen -W "$opts" -- "$cur"))
            else COMPREPLY=($(compgen -f -- "$cur")); fi ;;
        run|spawn) COMPREPLY=($(compgen -f -- "$cur")) ;;
        *) COMPREPLY=($(compgen -W "$opts" -- "$cur")) ;;
    esac
}
complete -F _jmigctl jmigctl
"""
