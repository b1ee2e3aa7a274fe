package transfer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func names(s *Source) []string {
	var n []string
	for _, e := range s.Manifest.Entries {
		n = append(n, e.Name)
	}
	return n
}

// By default the sender follows a symlink only when it resolves inside the
// tree being sent or into the Nix store; anything else is refused, naming
// the link and its target, and FollowAnySymlink allows it.
func TestListFollowsOnlyLinksInsideTheTreeOrStore(t *testing.T) {
	for _, tc := range []struct {
		name string
		// layout fills tree (a directory argument) and returns the link
		// that must be refused, or "" when all is followed.
		layout func(t *testing.T, tree, store, outside string) (refused string)
		want   []string // entries with the default options, when not refused
	}{
		{"link to a file in the tree", func(t *testing.T, tree, store, outside string) string {
			mkfile(t, filepath.Join(tree, "real/Image"), []byte("kernel"), 0o644)
			must(t, os.Symlink("real/Image", filepath.Join(tree, "Image")))
			return ""
		}, []string{"Image", "real", "real/Image"}},
		{"link to a directory in the tree", func(t *testing.T, tree, store, outside string) string {
			mkfile(t, filepath.Join(tree, "real/f"), []byte("f"), 0o644)
			must(t, os.Symlink(filepath.Join(tree, "real"), filepath.Join(tree, "dirlink")))
			return ""
		}, []string{"dirlink", "dirlink/f", "real", "real/f"}},
		{"link into the store", func(t *testing.T, tree, store, outside string) string {
			mkfile(t, filepath.Join(store, "abc-linux/Image"), []byte("kernel"), 0o444)
			must(t, os.Symlink(filepath.Join(store, "abc-linux/Image"), filepath.Join(tree, "Image")))
			return ""
		}, []string{"Image"}},
		{"link to a file elsewhere", func(t *testing.T, tree, store, outside string) string {
			mkfile(t, filepath.Join(outside, "secret"), []byte("secret"), 0o600)
			must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(tree, "leak")))
			return filepath.Join(tree, "leak")
		}, nil},
		{"link to a directory elsewhere", func(t *testing.T, tree, store, outside string) string {
			mkfile(t, filepath.Join(outside, "d/secret"), []byte("secret"), 0o600)
			must(t, os.Mkdir(filepath.Join(tree, "sub"), 0o755))
			must(t, os.Symlink(filepath.Join(outside, "d"), filepath.Join(tree, "sub/leak")))
			return filepath.Join(tree, "sub/leak")
		}, nil},
		{"relative link climbing out", func(t *testing.T, tree, store, outside string) string {
			mkfile(t, filepath.Join(outside, "secret"), []byte("secret"), 0o600)
			rel, err := filepath.Rel(tree, filepath.Join(outside, "secret"))
			must(t, err)
			must(t, os.Symlink(rel, filepath.Join(tree, "leak")))
			return filepath.Join(tree, "leak")
		}, nil},
		{"link in the tree to a link out", func(t *testing.T, tree, store, outside string) string {
			mkfile(t, filepath.Join(outside, "secret"), []byte("secret"), 0o600)
			must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(tree, "hop")))
			must(t, os.Symlink("hop", filepath.Join(tree, "a-leak")))
			return filepath.Join(tree, "a-leak")
		}, nil},
		{"store file linking elsewhere", func(t *testing.T, tree, store, outside string) string {
			mkfile(t, filepath.Join(outside, "secret"), []byte("secret"), 0o600)
			must(t, os.MkdirAll(filepath.Join(store, "abc-x"), 0o755))
			must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(store, "abc-x/leak")))
			must(t, os.Symlink(filepath.Join(store, "abc-x"), filepath.Join(tree, "x")))
			return filepath.Join(store, "abc-x/leak")
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tree, store, outside := t.TempDir(), t.TempDir(), t.TempDir()
			refused := tc.layout(t, tree, store, outside)
			src, err := List([]string{tree}, CollectOptions{storeDir: store})
			if refused == "" {
				if err != nil {
					t.Fatalf("List(%s) = %v, want it to follow the link", tc.name, err)
				}
				if got := names(src); !slices.Equal(got, tc.want) {
					t.Errorf("List(%s) entries = %q, want %q", tc.name, got, tc.want)
				}
				if err := src.Hash(context.Background()); err != nil {
					t.Errorf("Hash = %v", err)
				}
				return
			}
			var le *LinkError
			if !errors.As(err, &le) || le.Link != refused || !strings.HasPrefix(le.Target, outside) {
				t.Fatalf("List(%s) = %v, want a LinkError naming %s and its target in %s", tc.name, err, refused, outside)
			}
			if msg := err.Error(); !strings.Contains(msg, refused) || !strings.Contains(msg, "-> "+outside) || strings.Contains(msg, "\n") {
				t.Errorf("error %q: want one line naming the link and where it leads", msg)
			}
			// What the flag allows: the link followed, its file sent.
			src, err = List([]string{tree}, CollectOptions{FollowAnySymlink: true, storeDir: store})
			if err != nil {
				t.Fatalf("List(%s, FollowAnySymlink) = %v", tc.name, err)
			}
			if err := src.Hash(context.Background()); err != nil {
				t.Errorf("Hash(FollowAnySymlink) = %v", err)
			}
			if !slices.ContainsFunc(src.Manifest.Entries, func(e Entry) bool { return e.SHA256 == sha([]byte("secret")) }) {
				t.Errorf("List(%s, FollowAnySymlink) entries = %q, want the secret among them", tc.name, names(src))
			}
		})
	}
}

// An argument that is itself a symlink is followed wherever it leads:
// naming it is consent. Links under it are judged against where it leads.
func TestListFollowsASymlinkArgument(t *testing.T) {
	real, outside := t.TempDir(), t.TempDir()
	mkfile(t, filepath.Join(real, "f"), []byte("f"), 0o644)
	must(t, os.Symlink("f", filepath.Join(real, "g")))
	arg := filepath.Join(t.TempDir(), "result")
	must(t, os.Symlink(real, arg))
	file := filepath.Join(outside, "Image")
	mkfile(t, file, []byte("kernel"), 0o600)
	fileArg := filepath.Join(t.TempDir(), "kernel-link")
	must(t, os.Symlink(file, fileArg))
	src, err := List([]string{arg, fileArg}, CollectOptions{storeDir: t.TempDir()})
	if err != nil {
		t.Fatalf("List(symlink arguments) = %v", err)
	}
	if got, want := names(src), []string{"f", "g", "kernel-link"}; !slices.Equal(got, want) {
		t.Errorf("List(symlink arguments) entries = %q, want %q", got, want)
	}
	src, err = CollectEach(context.Background(), []string{arg}, CollectOptions{})
	if err != nil || !slices.Equal(names(src), []string{"result", "result/f", "result/g"}) {
		t.Errorf("CollectEach(symlink argument) = %v, %v", names(src), err)
	}
}

// CollectEach (ship --dest's sender) refuses the same links.
func TestCollectEachRefusesLinksOut(t *testing.T) {
	tree, outside := t.TempDir(), t.TempDir()
	mkfile(t, filepath.Join(outside, "secret"), []byte("secret"), 0o600)
	must(t, os.Symlink(filepath.Join(outside, "secret"), filepath.Join(tree, "leak")))
	_, err := CollectEach(context.Background(), []string{tree}, CollectOptions{storeDir: t.TempDir()})
	var le *LinkError
	if !errors.As(err, &le) || le.Link != filepath.Join(tree, "leak") {
		t.Errorf("CollectEach(link out) = %v, want a LinkError naming %s", err, filepath.Join(tree, "leak"))
	}
}

// What was checked is what is read: a directory of the tree swapped for a
// symlink out of it after the listing fails the hashing, and the file it
// now leads to is not read.
func TestHashRefusesADirectorySwappedForALink(t *testing.T) {
	tree, outside := t.TempDir(), t.TempDir()
	mkfile(t, filepath.Join(tree, "d/f"), []byte("ok"), 0o644)
	mkfile(t, filepath.Join(outside, "f"), []byte("no"), 0o600) // as long as d/f
	src, err := List([]string{tree}, CollectOptions{storeDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.Rename(filepath.Join(tree, "d"), filepath.Join(tree, "d.was")))
	must(t, os.Symlink(outside, filepath.Join(tree, "d")))
	err = src.Hash(context.Background())
	if err == nil {
		t.Fatalf("Hash after d was swapped for a link to %s = nil (entries %v), want a refusal", outside, src.Manifest.Entries)
	}
	if !strings.Contains(err.Error(), filepath.Join(tree, "d/f")) {
		t.Errorf("Hash error %q, want it to name %s", err, filepath.Join(tree, "d/f"))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
