package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// tokenStateVersion is the layout of the state file.
const tokenStateVersion = 1

// maxStateFileBytes bounds what the broker reads at start: about a million cars' messages.
const maxStateFileBytes = 1 << 30

// tokenStateFile is the standalone broker's state file: the gateway's signed CarToken messages
// in force, as the gateway sent them. The broker checks every signature again when it reads
// the file, so the file cannot be used to plant a token the gateway never named; it holds no
// secret (token ids, not tokens) and is written 0600 all the same.
type tokenStateFile struct {
	V         int                 `json:"v"`
	CarTokens []protocol.Envelope `json:"car_tokens"`
}

// load reads the state file, if there is one. A message whose signature no trusted key
// verifies (the key was retired since) is dropped with a warning: the gateway names that car's
// token again when it connects. A file that cannot be read or parsed stops the broker, rather
// than start it having forgotten every retired token.
func (f *tokenFollower) load() error {
	file, err := os.Open(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read state file: %w", err)
	}
	defer file.Close()
	b, err := io.ReadAll(io.LimitReader(file, maxStateFileBytes+1))
	if err != nil {
		return fmt.Errorf("read state file %q: %w", f.path, err)
	}
	if len(b) > maxStateFileBytes {
		return fmt.Errorf("state file %q is larger than %d bytes", f.path, maxStateFileBytes)
	}
	var st tokenStateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("state file %q: %w (move it away to start without it: retired car tokens are then admitted until the gateway connects)", f.path, err)
	}
	if st.V != tokenStateVersion {
		return fmt.Errorf("state file %q: version %d, this broker reads %d", f.path, st.V, tokenStateVersion)
	}
	dropped := 0
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, env := range st.CarTokens {
		ct, err := f.verify(env)
		if err != nil {
			dropped++
			continue
		}
		if ct.IssuedAtMs > f.current[ct.VIN].IssuedAtMs {
			f.current[ct.VIN] = carTokenState{CarToken: ct, env: env}
		}
	}
	if dropped > 0 {
		f.b.log.Warn("state file: car tokens dropped, not signed by a trusted gateway key", "path", f.path, "dropped", dropped)
	}
	f.b.log.Info("state file read", "path", f.path, "car_tokens", len(f.current))
	return nil
}

// markDirty asks persistLoop for a write; writes that pile up while one runs become one.
func (f *tokenFollower) markDirty() {
	if f.dirty == nil {
		return
	}
	select {
	case f.dirty <- struct{}{}:
	default:
	}
}

// persistLoop writes the state file when asked, until stop; then it writes what is pending.
func (f *tokenFollower) persistLoop() {
	defer close(f.stopped)
	for {
		select {
		case <-f.dirty:
			f.save()
		case <-f.stop:
			select {
			case <-f.dirty:
				f.save()
			default:
			}
			return
		}
	}
}

// save writes the state file atomically (a crash leaves the old or the new one).
func (f *tokenFollower) save() {
	f.mu.RLock()
	st := tokenStateFile{V: tokenStateVersion, CarTokens: make([]protocol.Envelope, 0, len(f.current))}
	vins := make([]string, 0, len(f.current))
	for vin := range f.current {
		vins = append(vins, vin)
	}
	slices.Sort(vins)
	for _, vin := range vins {
		st.CarTokens = append(st.CarTokens, f.current[vin].env)
	}
	f.mu.RUnlock()
	b, err := json.Marshal(st)
	if err == nil {
		err = sign.WriteFileAtomic(f.path, b, 0o600)
	}
	if err != nil {
		// The next change tries again; meanwhile a restart forgets what is not written.
		f.b.log.Error("state file not written", "path", f.path, "err", err)
	}
}

// close stops persistLoop after a last write. Idempotent.
func (f *tokenFollower) close() {
	f.closeOnce.Do(func() {
		if f.stop != nil {
			close(f.stop)
			<-f.stopped
		}
	})
}
