package vehicle

// What this directory's external tests (package vehicle_test) need of the car's insides: they
// drive the car through its local link (pkg/vehicle/link), which package vehicle's own tests
// cannot import.

// NoncesHeld is how many local-link challenges the car holds, used or not.
func (c *Car) NoncesHeld() int {
	c.nonces.mu.Lock()
	defer c.nonces.mu.Unlock()
	return len(c.nonces.entries)
}

// HoldOnlyNonce forgets every challenge the car holds and issues nonce (shared budget) at nowMs,
// valid until expiresAtMs.
func (c *Car) HoldOnlyNonce(nonce string, expiresAtMs, nowMs int64) {
	c.nonces.mu.Lock()
	c.nonces.entries = nil
	c.nonces.mu.Unlock()
	c.nonces.add(nonce, "", 0, expiresAtMs, nowMs)
}

// The fuzz fixtures, for FuzzLocalRequest.
var (
	FuzzGateway = fuzzGateway
	FuzzCar     = fuzzCar
	LocalSeeds  = localSeeds
	CheckResult = checkResult
)

// FuzzNonce is the nonce of the local seeds.
const FuzzNonce = fuzzNonce
