package remote

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// identities is what Dial offers a server, in order, and notes about what
// it could not offer (for the error when authentication fails).
type identities struct {
	signers []ssh.Signer
	agent   net.Conn // closed after the handshake
	notes   []string
}

func (id *identities) close() {
	if id.agent != nil {
		id.agent.Close()
	}
}

func (id *identities) addSigner(s ssh.Signer) {
	pub := s.PublicKey().Marshal()
	for _, have := range id.signers {
		if bytes.Equal(have.PublicKey().Marshal(), pub) {
			return
		}
	}
	id.signers = append(id.signers, s)
}

// loadIdentities gathers the keys to offer for t:
//   - Config.IdentityFiles first (a missing one is an error, like ssh -i);
//   - if the ssh config names IdentityFiles or says IdentitiesOnly, only
//     those files (each signed by the agent when the agent holds it);
//   - otherwise every agent key, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
//
// Encrypted files are used only through the agent: nbship never prompts.
func loadIdentities(t *target, extra []string, home string) (*identities, error) {
	id := &identities{}
	var agentSigners []ssh.Signer
	if t.agentSocket != "" {
		conn, err := net.Dial("unix", t.agentSocket)
		if err != nil {
			id.notes = append(id.notes, fmt.Sprintf("ssh-agent at %s: %v", t.agentSocket, err))
		} else {
			id.agent = conn
			agentSigners, err = agent.NewClient(conn).Signers()
			if err != nil {
				id.notes = append(id.notes, fmt.Sprintf("ssh-agent at %s: %v", t.agentSocket, err))
			}
		}
	}
	fromAgent := func(pub ssh.PublicKey) ssh.Signer {
		for _, s := range agentSigners {
			if bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) {
				return s
			}
		}
		return nil
	}
	// load adds one file. Files the caller named must work; files from
	// the config or the defaults that are missing are skipped, and other
	// problems with them become notes.
	load := func(path string, explicit bool) error {
		s, err := loadIdentityFile(path, fromAgent)
		switch {
		case err == nil:
			id.addSigner(s)
		case explicit:
			id.close()
			return fmt.Errorf("ssh: %w", err)
		case !errors.Is(err, fs.ErrNotExist):
			id.notes = append(id.notes, err.Error())
		}
		return nil
	}
	for _, f := range extra {
		if strings.HasPrefix(f, "~/") {
			f = home + f[1:]
		}
		if err := load(f, true); err != nil {
			return nil, err
		}
	}
	if !t.namedIDs {
		for _, s := range agentSigners {
			id.addSigner(s)
		}
	}
	for _, f := range t.identityFiles {
		if err := load(f, false); err != nil {
			return nil, err
		}
	}
	return id, nil
}

// loadIdentityFile returns a signer for the private key at path: the
// agent's when the agent holds that key, else one from the file. An
// encrypted key the agent does not hold is an error saying what to do.
func loadIdentityFile(path string, fromAgent func(ssh.PublicKey) ssh.Signer) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if pub := publicKeyFor(path); pub != nil {
		if s := fromAgent(pub); s != nil {
			return s, nil
		}
	}
	s, err := ssh.ParsePrivateKey(b)
	var pm *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &pm):
		if pm.PublicKey != nil {
			if s := fromAgent(pm.PublicKey); s != nil {
				return s, nil
			}
		}
		return nil, fmt.Errorf("identity file %s is encrypted and not in ssh-agent: load it with 'ssh-add %s' (nbship never asks for passphrases)", path, path)
	case err != nil:
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	if a := fromAgent(s.PublicKey()); a != nil {
		return a, nil
	}
	return s, nil
}

// publicKeyFor reads path.pub, if there is one.
func publicKeyFor(path string) ssh.PublicKey {
	b, err := os.ReadFile(path + ".pub")
	if err != nil {
		return nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		return nil
	}
	return pub
}
