// Package remote runs commands on hosts over SSH (golang.org/x/crypto/ssh).
//
// Dial makes one connection per host, and every command on the Client is a
// session on it, like OpenSSH's ControlMaster. Keepalives
// (keepalive@openssh.com) run every Config.KeepAlive; after three without
// an answer the connection is closed and every command on it fails, so a
// dead host cannot hang a build.
//
// Hosts are named as ssh(1) names them: [user@]host[:port] or a Host
// alias of ~/.ssh/config, with HostName, User, Port, IdentityFile,
// IdentitiesOnly, IdentityAgent, ProxyJump, UserKnownHostsFile,
// HostKeyAlias, ConnectTimeout, ServerAliveInterval and
// ServerAliveCountMax honoured. The config is read with
// github.com/kevinburke/ssh_config, which supports Host patterns with
// negation and Include, and Match only as "Match host" or "Match all";
// a config using other Match criteria is an error. /etc/ssh/ssh_config
// is not read.
//
// Host keys are checked against known_hosts (golang.org/x/crypto/ssh/
// knownhosts: hashed names, [host]:port, @revoked, @cert-authority) for
// every hop before anything but the key exchange is sent, and the server
// is asked first for the key types known_hosts has for it. An unknown or
// changed key is a *HostKeyError. Config.AcceptNew adds unknown keys, as
// StrictHostKeyChecking=accept-new does; a changed key is never accepted.
//
// Keys come from ssh-agent and identity files; encrypted files are used
// through the agent only, never with a passphrase prompt.
//
// Cmd says how commands are quoted and how they are stopped: a cancelled
// context, Process.Close, Client.Close and a vanished controller all leave
// no remote process behind.
package remote
