//go:build nbship_testhooks

package transfer

// Test hooks, only in binaries built with -tags nbship_testhooks (the
// tests' builds; never make build). NBSHIP_TEST_FLIP_NAR=NAME flips one
// byte, in the middle, of the NAR of store path NAME as the receiver reads
// it, before it is hashed: a NAR corrupted between the ends.

import "os"

const flipNAREnv = "NBSHIP_TEST_FLIP_NAR"

var flipNAR = os.Getenv(flipNAREnv)

func testHookData(e *Entry, p []byte, off int64) {
	if flipNAR == "" || e.Type != TypeNAR || e.Name != flipNAR {
		return
	}
	if at := e.Size / 2; off <= at && at < off+int64(len(p)) {
		p[at-off] ^= 0x20
	}
}

// TestHookEnv is the environment a controller passes on to the ends it
// starts so that they run the same test hooks.
func TestHookEnv() map[string]string {
	if flipNAR == "" {
		return nil
	}
	return map[string]string{flipNAREnv: flipNAR}
}
