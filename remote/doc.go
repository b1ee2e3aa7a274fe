// Package remote runs commands on hosts over SSH (golang.org/x/crypto/ssh).
//
// Dial makes one connection per host, and every command on the Client is a
// session on it, like OpenSSH's ControlMaster. Keepalives
// (keepalive@openssh.com) run every Config.KeepAlive; after three without
// an answer the connection is closed and every command on it fails, so a
// dead host cannot hang a build.
//
// Hosts are named as ssh(1) names them: [user@]host[:port] or a Host
// alias of the ssh config, and resolved as OpenSSH resolves them. Where
// an ssh binary is on PATH, Dial asks it: `ssh -G [-F FILE] [-p PORT]
// [-l USER] -- HOST` (-F when Config.SSHConfig is set or Config.Home is
// not the home of the password database, which is where ssh finds ~), and
// uses HostName, User, Port, IdentityFile, IdentitiesOnly, IdentityAgent,
// ProxyJump, ProxyCommand, UserKnownHostsFile, GlobalKnownHostsFile,
// HostKeyAlias, HashKnownHosts, StrictHostKeyChecking (accept-new; "no"
// means accept-new too: a changed key is never accepted),
// HostKeyAlgorithms, ConnectTimeout, ServerAliveInterval and
// ServerAliveCountMax from what it prints. Elsewhere (or with
// Config.BuiltinSSHConfig) nbship's own parser (sshconf.go) reads the
// same files as readconf.c does: first value wins, Host and Match (host,
// originalhost, user, localuser, exec, final, canonical, all) with the
// final pass, Include, quotes, %-tokens and ${ENV}. The differential
// tests hold the two to the same answers.
//
// A ProxyCommand runs as ssh runs it ("exec COMMAND" through $SHELL,
// tokens %h %k %n %p %r %% expanded), its stdin and stdout the
// connection and its stderr passed to Config.Log; it is used for a
// destination or for the first hop of a ProxyJump chain (later hops are
// reached through the one before, as with ssh -J). Closing the Client
// kills its process group.
//
// Host keys are checked for every hop before anything but the key
// exchange is sent, as OpenSSH's check_host_key decides (knownhosts.go):
// names and ports matched with patterns, negation and hashed names, the
// name without the port also tried for a key not otherwise known,
// @cert-authority lines trusting only host certificates signed by that CA
// (principals, validity and signature checked with ssh.CertChecker) and
// @revoked lines covering the keys and CAs they name. Host key
// algorithms are ordered as order_hostkeyalgs orders them. An unknown,
// changed or revoked key, or a certificate not accepted, is a
// *HostKeyError. Config.AcceptNew adds unknown keys, as
// StrictHostKeyChecking=accept-new does; a changed key is never accepted.
//
// Keys come from ssh-agent and identity files; encrypted files are used
// through the agent only, never with a passphrase prompt.
//
// Cmd says how commands are quoted and how they are stopped: a cancelled
// context, Process.Close, Client.Close and a vanished controller all leave
// no remote process behind.
//
// Each session starts the user's login shell. After Client.UseAgent (or
// InstallNbship with Agent), every command goes instead through the
// host's `nbship agent` (ServeAgent), started in one session that lives as
// long as the Client: a channel per command to the agent's unix socket
// (direct-streamlocal@openssh.com), argv run with exec, no shell
// (agent.go, agentproto.go, agentserve.go; docs/design.md, "One session
// per host").
package remote
