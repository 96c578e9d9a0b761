package vehicle

import (
	"sort"
	"sync"
)

// Garage is the set of cars one process runs, by VIN. fleet.Run puts every car it builds into
// fleet.Config.Garage, and a link.Server serves the cars of its garage. A car stays in the garage
// after fleet.Run returns: it needs no broker, only its store, so an outage drill can stop the
// broker (or the whole fleet) and still open cars over the link.
type Garage struct {
	mu   sync.RWMutex
	cars map[string]*Car
}

// NewGarage returns an empty garage.
func NewGarage() *Garage { return &Garage{cars: make(map[string]*Car)} }

// Put adds car, replacing a car of the same VIN.
func (g *Garage) Put(car *Car) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cars[car.VIN()] = car
}

// Car returns the car with vin.
func (g *Garage) Car(vin string) (*Car, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	c, ok := g.cars[vin]
	return c, ok
}

// VINs lists the cars, sorted.
func (g *Garage) VINs() []string {
	g.mu.RLock()
	out := make([]string, 0, len(g.cars))
	for v := range g.cars {
		out = append(out, v)
	}
	g.mu.RUnlock()
	sort.Strings(out)
	return out
}
