"""configcli for kubedirector-rs: the read-only interface of KubeDirector's configcli, over
/etc/guestconfig/configmeta.json. Installed by the operator into members of roles with a setup
package, as the `configcli` module and the `configcli`, `ccli`, `bdvcli`, `bd_vcli` and `configmacro`
commands. Python 3.6 or later, standard library only.

Lookups walk configmeta from its root by dotted key. A map holding `bdvlibrefkey` is a reference:
the walk goes on from the root at that path (references may chain). A list of maps reads as one map
(so `connections.secrets.<type>.data.<key>` needs no index). A map prints as its keys, a list comma-
joined, booleans as true/false, null as an empty line.

The operations that needed KubeDirector's in-guest agent (dsync waits, service registration, remote
copy and execute, tenant info) do not exist here and say so.
"""

import argparse
import json
import os
import sys

__all__ = ["ConfigCli", "ConfigCliError", "__version__"]
__version__ = "0.8.0"

REFKEY = "bdvlibrefkey"
NAMESPACES = ("node", "version", "cluster", "distros", "services", "tenant", "auth", "platform",
              "connections", "nodegroups")
# Upstream answered these with a no-op; kept as no-ops (startscripts call them unconditionally), with
# a note on stderr.
NOOP = {
    "wait": "dsync wait",
    "tokenwait": "dsync tokenwait",
    "service_key": "service registration",
    "unregister_srvc": "service unregistration",
}
# Upstream failed on these; they fail here too, with a clear message.
UNSUPPORTED = {
    "tokenwake": "dsync tokenwake",
    "cp": "remote copy (--cp)",
    "execute": "remote execute (--execute)",
    "tenant_info": "tenant info",
}


class ConfigCliError(KeyError):
    """A lookup or usage error; its message names the key. Also a KeyError, as configcli's was."""

    def __str__(self):
        return self.args[0] if self.args else ""


def configmeta_path():
    explicit = os.environ.get("CONFIGCLI_CONFIGMETA")
    if explicit:
        return explicit
    root = os.environ.get("KD_GUEST_ROOT", "")
    return root + "/etc/guestconfig/configmeta.json"


def load(path=None):
    path = path or configmeta_path()
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigCliError("cannot read %s: %s" % (path, e))


def _merged(node):
    """A list of maps reads as one map (later entries win); other values stay as they are."""
    if isinstance(node, list) and node and all(isinstance(i, dict) for i in node):
        out = {}
        for item in node:
            out.update(item)
        return out
    return node


def resolve(root, tokens, _depth=0):
    """The value at `tokens` from the root, references followed."""
    if _depth > 64:
        raise ConfigCliError("reference loop at %s" % ".".join(tokens))
    node = root
    for i, token in enumerate(tokens):
        node = _merged(node)
        if isinstance(node, dict) and REFKEY in node:
            return resolve(root, list(node[REFKEY]) + list(tokens[i:]), _depth + 1)
        if not isinstance(node, dict):
            done = ".".join(tokens[:i])
            raise ConfigCliError("%s: %s is a value, not a map (no key %r in it)"
                                 % (".".join(tokens), done, token))
        if token not in node:
            done = ".".join(tokens[:i]) or "the top level"
            keys = ", ".join(sorted(node)) or "none"
            raise ConfigCliError("%s: no key %r in %s (keys: %s)" % (".".join(tokens), token, done, keys))
        node = node[token]
    node = _merged(node)
    if isinstance(node, dict) and REFKEY in node:
        return resolve(root, list(node[REFKEY]), _depth + 1)
    return node


def render(value):
    """A value as configcli prints it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return ",".join(value.keys())
    if isinstance(value, list):
        return ",".join(render(v) for v in value)
    return str(value)


class Namespace(object):
    """configcli's `namespace` command object: raw values by key."""

    def __init__(self, data):
        self.jsonData = data

    def getWithTokens(self, tokens):
        value = resolve(self.jsonData, list(tokens))
        return list(value.keys()) if isinstance(value, dict) else value

    def getValue(self, key):
        return self.getWithTokens(key.split("."))

    def searchForToken(self, start, match):
        """Paths (token lists) under `start` at which `match` is found."""
        start = start.split(".") if isinstance(start, str) else list(start)
        found, queue = [], [start]
        while queue:
            path = queue.pop(0)
            try:
                value = resolve(self.jsonData, path)
            except ConfigCliError:
                continue
            if isinstance(value, dict):
                if match in value:
                    found.append(path + [match])
                    continue
                queue.extend(path + [k] for k in value)
            elif value == match or (isinstance(value, list) and match in value):
                found.append(path)
        return found


class NodeMacro(object):
    def __init__(self, ns):
        self.configmeta = ns

    def _ids(self):
        ids = []
        for ng in self.configmeta.jsonData.get("nodegroups", {}).values():
            for role in ng.get("roles", {}).values():
                ids.extend(role.get("node_ids", []))
        return sorted(set(ids), key=lambda i: int("".join(c for c in i if c.isdigit()) or 0))

    def getNodeIdSelf(self):
        return self.configmeta.getValue("node.id")

    def getNodeIdFromFqdn(self, fqdn):
        for ng in self.configmeta.jsonData.get("nodegroups", {}).values():
            for role in ng.get("roles", {}).values():
                if fqdn in role.get("fqdn_mappings", {}):
                    return role["fqdn_mappings"][fqdn]
        raise ConfigCliError("no node with FQDN %s" % fqdn)

    def getNodeIndexSelf(self):
        return str(self._ids().index(self.getNodeIdSelf()))

    def getNodeIndexFromFqdn(self, fqdn):
        return str(self._ids().index(self.getNodeIdFromFqdn(fqdn)))


class NodegroupMacro(object):
    def __init__(self, ns):
        self.configmeta = ns

    def getNumNodegroups(self):
        return len(self.configmeta.jsonData.get("nodegroups", {}))

    def getNodegroupFqdns(self, ngid):
        groups = self.configmeta.jsonData.get("nodegroups", {})
        if ngid not in groups:
            raise ConfigCliError("no nodegroup %s (nodegroups: %s)" % (ngid, ", ".join(groups) or "none"))
        out = []
        for role in groups[ngid].get("roles", {}).values():
            for f in role.get("fqdns", []):
                if f not in out:
                    out.append(f)
        return out

    def getLocalGroupHosts(self):
        return self.getNodegroupFqdns(self.configmeta.getValue("node.nodegroup_id"))

    def getClusterFqdns(self):
        out = []
        for ngid in self.configmeta.jsonData.get("nodegroups", {}):
            out.extend(f for f in self.getNodegroupFqdns(ngid) if f not in out)
        return out


class Macro(object):
    def __init__(self, ns):
        self.configmeta = ns
        self._subs = {"node": NodeMacro(ns), "nodegroup": NodegroupMacro(ns)}

    def getSubcommandObject(self, name):
        return self._subs.get(name)


class ConfigCli(object):
    """The Python entry point startscripts import: ConfigCli(shell=False).getCommandObject(...)."""

    def __init__(self, shell=False, configmeta=None):
        self.shell = shell
        self.namespace = Namespace(load(configmeta))
        self.commands = {"namespace": self.namespace, "macro": Macro(self.namespace)}

    def getCommandObject(self, name):
        return self.commands.get(name)

    def is_interactive(self):
        return self.shell

    def process_result(self, value):
        return render(value)

    def onecmd(self, line):
        return render(run_instruction(self, line.split()))


def run_instruction(cli, words):
    """`namespace <ns> [key]`, `macro node|nodegroup <flag> [arg]`, `ccli version`."""
    if not words:
        raise ConfigCliError("nothing to do")
    cmd, rest = words[0], words[1:]
    if cmd == "namespace":
        if not rest or rest[0] not in NAMESPACES:
            raise ConfigCliError("namespace: %r is not one (allowed: %s)"
                                 % (rest[0] if rest else "", ", ".join(NAMESPACES)))
        if rest[0] == "version":
            return cli.namespace.getValue("version")
        key = [rest[0]] + (".".join(rest[1:]).split(".") if rest[1:] else [])
        return cli.namespace.getWithTokens(key)
    if cmd == "macro":
        return run_macro(cli, rest)
    if cmd == "ccli" and rest[:1] == ["version"]:
        return __version__
    raise ConfigCliError("unknown command %r (allowed: namespace, macro, ccli version)" % cmd)


def run_macro(cli, words):
    sub = cli.getCommandObject("macro").getSubcommandObject(words[0] if words else "")
    flag, arg = (words[1:2] or [""])[0], (words[2:3] or [None])[0]
    if "=" in flag:
        flag, arg = flag.split("=", 1)
    if isinstance(sub, NodeMacro):
        calls = {"--get_self_index": sub.getNodeIndexSelf, "--get_self_id": sub.getNodeIdSelf,
                 "--get_index": lambda: sub.getNodeIndexFromFqdn(arg),
                 "--get_id": lambda: sub.getNodeIdFromFqdn(arg)}
    elif isinstance(sub, NodegroupMacro):
        calls = {"--num_nodegroups": sub.getNumNodegroups,
                 "--get_local_group_fqdns": sub.getLocalGroupHosts,
                 "--get_nodegroup_fqdns": lambda: sub.getNodegroupFqdns(arg),
                 "--get_all_fqdns": sub.getClusterFqdns}
    else:
        raise ConfigCliError("macro: %r is not one (allowed: node, nodegroup)" % (words[0] if words else ""))
    if flag not in calls:
        raise ConfigCliError("macro %s: %r is not a flag (allowed: %s)" % (words[0], flag, ", ".join(sorted(calls))))
    return calls[flag]()


def parser(prog):
    p = argparse.ArgumentParser(prog=prog, description="Reads this member's configmeta.json.")
    p.add_argument("-v", "--version", action="store_true")
    p.add_argument("--baseimg_version", action="store_true")
    p.add_argument("-g", "--get", metavar="KEY")
    p.add_argument("--get_local_group_fqdns", action="store_true")
    p.add_argument("--get_nodegroup_fqdns", metavar="NODEGROUP")
    p.add_argument("--get_all_fqdns", action="store_true")
    p.add_argument("--tenant_info_lookup", metavar="KEY")
    for opt in ("wait", "tokenwait", "tokenwake", "service_key", "unregister_srvc"):
        p.add_argument("--" + opt, metavar="VALUE")
    for opt in ("cp", "execute", "tenant_info", "success", "error"):
        p.add_argument("--" + opt, action="store_true")
    for opt in ("timeout", "fqdn", "systemv", "systemctl", "node", "src", "dest", "perms", "remote_node",
                "script"):
        p.add_argument("--" + opt, metavar="VALUE")
    p.add_argument("-t", dest="timeout")
    p.add_argument("instruction", nargs=argparse.REMAINDER)
    return p


def main(argv=None, prog=None):
    prog = prog or os.path.basename(sys.argv[0]) or "configcli"
    argv = sys.argv[1:] if argv is None else argv
    if prog == "configmacro":
        argv = ["macro"] + list(argv)
    try:
        args = parser(prog).parse_args(argv)
        for opt, what in NOOP.items():
            if getattr(args, opt):
                sys.stderr.write("%s: %s is not available under kubedirector-rs; nothing done\n" % (prog, what))
                return 0
        for opt, what in UNSUPPORTED.items():
            if getattr(args, opt):
                raise ConfigCliError("%s is not supported: it needed KubeDirector's in-guest agent" % what)
        if args.version:
            print(__version__)
            return 0
        if args.baseimg_version:
            try:
                with open(os.environ.get("KD_GUEST_ROOT", "") + "/etc/guestconfig/base_img_version") as f:
                    print(f.readline().rstrip("\n"))
            except OSError:
                print("")
            return 0
        cli = ConfigCli()
        if args.get is not None:
            words = args.get.split(".")
            value = run_instruction(cli, ["namespace", words[0]] + ([".".join(words[1:])] if words[1:] else []))
        elif args.tenant_info_lookup is not None:
            value = run_instruction(cli, ["namespace", "tenant", args.tenant_info_lookup])
        elif args.get_local_group_fqdns:
            value = run_macro(cli, ["nodegroup", "--get_local_group_fqdns"])
        elif args.get_nodegroup_fqdns is not None:
            value = run_macro(cli, ["nodegroup", "--get_nodegroup_fqdns", args.get_nodegroup_fqdns])
        elif args.get_all_fqdns:
            value = run_macro(cli, ["nodegroup", "--get_all_fqdns"])
        elif args.instruction:
            value = run_instruction(cli, args.instruction)
        else:
            raise ConfigCliError("nothing asked (try --get node.role_id, or --help)")
        print(render(value))
        return 0
    except ConfigCliError as e:
        sys.stderr.write("%s: %s\n" % (prog, e))
        return 1
    except Exception as e:  # never a traceback in a startscript's log
        sys.stderr.write("%s: unexpected error: %s: %s\n" % (prog, type(e).__name__, e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
