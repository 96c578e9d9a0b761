package server

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrNoDataDir means the data directory named for `gateway serve` does not exist: a typo must
// not silently become a new gateway with a new signing key.
var ErrNoDataDir = errors.New("data directory does not exist")

// CheckDataDir is `gateway serve`'s rule for its data directory: it must exist, unless create
// is set (--init) or it is the default ./data, which a first start may make.
func CheckDataDir(dir string, create bool) error {
	if create || filepath.Clean(dir) == filepath.Clean(DefaultConfig().Data) {
		return nil
	}
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %s (check --data, GATEWAY_DATA or data: in the config file; "+
			"to make a new gateway there, start once with --init)", ErrNoDataDir, dir)
	case err != nil:
		return fmt.Errorf("data directory %s: %w", dir, err)
	case !st.IsDir():
		return fmt.Errorf("data directory %s is not a directory", dir)
	}
	return nil
}

// footprint is what Start found on disk before it wrote anything, so that a start that fails
// (a busy port, a bad key file) removes what it made and leaves no fresh keys behind.
type footprint struct {
	createdDir string                     // the top-most directory Start created, if any
	entries    map[string]map[string]bool // directory → names it held before Start
	files      map[string]bool            // single files (the admin token) → existed before
}

// prepareDataDir makes cfg.Data (0700) when missing and records what existed.
func prepareDataDir(cfg Config) (*footprint, error) {
	f := &footprint{entries: map[string]map[string]bool{}, files: map[string]bool{}}
	top, err := topMissing(cfg.Data)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Data, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %q: %w", cfg.Data, err)
	}
	f.createdDir = top
	for _, dir := range []string{cfg.Data, cfg.PublicDir} {
		if dir == "" || (top != "" && within(dir, top)) {
			continue // inside the directory Start creates: undo removes it whole
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue // made by Start (or unreadable, which Start reports)
		}
		names := map[string]bool{}
		for _, e := range ents {
			names[e.Name()] = true
		}
		f.entries[dir] = names
	}
	tok := cfg.adminTokenPath()
	_, err = os.Lstat(tok)
	f.files[tok] = err == nil
	return f, nil
}

// topMissing returns the top-most directory of dir's path that does not exist ("" if dir does).
func topMissing(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	top := ""
	for p := abs; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			return top, nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		top = p
		if filepath.Dir(p) == p {
			return top, nil
		}
	}
}

// undo removes what Start made: the directory it created, or the new entries of the ones that
// existed, and an admin token file that was not there.
func (f *footprint) undo() {
	if f == nil {
		return
	}
	if f.createdDir != "" {
		_ = os.RemoveAll(f.createdDir)
	}
	for dir, before := range f.entries {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !before[e.Name()] {
				_ = os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}
	for path, existed := range f.files {
		if !existed {
			_ = os.Remove(path)
		}
	}
}

// within reports whether path is dir or inside it.
func within(path, dir string) bool {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false
	}
	rel, err := filepath.Rel(dir, abs)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// existingGateway refuses a dir that holds no gateway (no gateway.db), before anything would
// create one there: `rotate-key --data nodir` must leave nothing behind.
func existingGateway(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, DBFile)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("no gateway in %s (no %s): check --data", dir, DBFile)
		}
		return err
	}
	return nil
}
