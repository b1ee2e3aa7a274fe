package image_test

import (
	"context"
	"errors"
	"log"
	"os"
	"path/filepath"

	"github.com/nbship/nbship/image"
)

// A receiver on the PXE host: files it already has are hard-linked from the
// current generation, the rest written into the staging directory, then
// the whole published at once.
func ExampleSlot_Publish() {
	ctx := context.Background()
	p, err := image.Lookup("c2.large.arm", nil)
	if err != nil {
		log.Fatal(err)
	}
	slot, err := image.OpenSlot("/var/lib/nginx/netboot", p)
	if err != nil {
		log.Fatal(err)
	}
	have, err := slot.Have() // SHA-256 -> file of the current generation
	if err != nil {
		log.Fatal(err)
	}
	staged, err := slot.Stage()
	if err != nil {
		log.Fatal(err)
	}
	var incoming []struct {
		name string
		sum  [32]byte
		data []byte
	} // from the sender
	for _, f := range incoming {
		dst := filepath.Join(staged, f.name)
		if src, ok := have[f.sum]; ok && os.Link(src, dst) == nil {
			continue // never write into a linked file: it is the live one
		}
		if err := os.WriteFile(dst, f.data, 0o644); err != nil {
			slot.Discard(staged)
			log.Fatal(err)
		}
	}
	g, err := slot.Publish(ctx, staged, 3) // staged is gone after this, either way
	var refused *image.VerifyError
	if errors.As(err, &refused) {
		log.Fatalf("not published: %v", err) // the slot serves what it served
	}
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("serving %s from %s", g.Name, g.Dir)
}
