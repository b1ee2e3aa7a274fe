package metal

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/packethost/packngo"
)

// DrainTag is the tag that keeps a device out of the machines file while
// it finishes its builds; `device drain` adds it and `device restore`
// removes it.
const DrainTag = "skip-hydra"

// Device is a device as the API reports it.
type Device struct {
	ID         string   `json:"id"`
	Href       string   `json:"href,omitempty"`
	Hostname   string   `json:"hostname,omitempty"`
	State      string   `json:"state,omitempty"`
	Plan       string   `json:"plan,omitempty"`
	Metro      string   `json:"metro,omitempty"`
	Facility   string   `json:"facility,omitempty"`
	PublicIPv4 string   `json:"public_ipv4,omitempty"`
	Tags       []string `json:"tags"`
	Spot       bool     `json:"spot_instance,omitempty"`
}

func deviceFrom(d *packngo.Device) Device {
	out := Device{
		ID:         d.ID,
		Href:       d.Href,
		Hostname:   d.Hostname,
		State:      d.State,
		PublicIPv4: publicIPv4(d.Network),
		Tags:       append([]string{}, d.Tags...),
		Spot:       d.SpotInstance,
	}
	if out.ID == "" {
		out.ID = idFromHref(d.Href)
	}
	if d.Plan != nil {
		out.Plan = d.Plan.Slug
	}
	if d.Facility != nil {
		out.Facility = d.Facility.Code
		if d.Facility.Metro != nil {
			out.Metro = d.Facility.Metro.Code
		}
	}
	if d.Metro != nil && d.Metro.Code != "" {
		out.Metro = d.Metro.Code
	}
	return out
}

// publicIPv4 is the device's public IPv4 address (address_family 4,
// public), the management one if there are several.
func publicIPv4(ips []*packngo.IPAddressAssignment) string {
	addr := ""
	for _, ip := range ips {
		if ip == nil || ip.AddressFamily != 4 || !ip.Public || ip.Address == "" {
			continue
		}
		if ip.Management {
			return ip.Address
		}
		if addr == "" {
			addr = ip.Address
		}
	}
	return addr
}

// HasTag reports whether d has tag t.
func (d Device) HasTag(t string) bool { return slices.Contains(d.Tags, t) }

// Active reports whether the API says d is up and running.
func (d Device) Active() bool { return d.State == "active" }

// Devices lists the project's devices, sorted by hostname and ID. If tag
// is not empty only devices with that tag are returned.
func (c *Client) Devices(ctx context.Context, tag string) ([]Device, error) {
	pid, err := c.project()
	if err != nil {
		return nil, err
	}
	var out []Device
	err = c.call(ctx, func(a api) error {
		ds, _, err := a.devices.List(pid, &packngo.ListOptions{Includes: []string{"plan", "metro"}})
		for i := range ds {
			d := deviceFrom(&ds[i])
			if tag == "" || d.HasTag(tag) {
				out = append(out, d)
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Hostname != out[j].Hostname {
			return out[i].Hostname < out[j].Hostname
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Device returns one device.
func (c *Client) Device(ctx context.Context, id string) (*Device, error) {
	if err := checkUUID("device", id); err != nil {
		return nil, err
	}
	return one(ctx, c, func(a api) (*packngo.Device, *packngo.Response, error) {
		return a.devices.Get(id, &packngo.GetOptions{Includes: []string{"plan", "metro"}})
	}, deviceFrom)
}

// Reboot asks the API to reboot the device.
func (c *Client) Reboot(ctx context.Context, id string) error {
	if err := checkUUID("device", id); err != nil {
		return err
	}
	return c.call(ctx, func(a api) error {
		_, err := a.devices.Reboot(id)
		return err
	})
}

// AddTag adds tag to the device's tags, keeping the others. The API's
// update replaces the whole list, so the list is read first; a device that
// has the tag already is left alone (changed is false).
func (c *Client) AddTag(ctx context.Context, id, tag string) (d *Device, changed bool, err error) {
	return c.editTags(ctx, id, tag, func(tags []string) []string {
		if slices.Contains(tags, tag) {
			return nil
		}
		return append(slices.Clone(tags), tag)
	})
}

// RemoveTag removes tag from the device's tags, keeping the others.
func (c *Client) RemoveTag(ctx context.Context, id, tag string) (d *Device, changed bool, err error) {
	return c.editTags(ctx, id, tag, func(tags []string) []string {
		if !slices.Contains(tags, tag) {
			return nil
		}
		out := make([]string, 0, len(tags))
		for _, t := range tags {
			if t != tag {
				out = append(out, t)
			}
		}
		return out
	})
}

// editTags reads the device's tags and, when edit returns a new list (not
// nil), writes it back. Read and write are two requests: a tag another
// client changes in between is overwritten.
func (c *Client) editTags(ctx context.Context, id, tag string, edit func([]string) []string) (*Device, bool, error) {
	if err := checkUUID("device", id); err != nil {
		return nil, false, err
	}
	if tag == "" {
		return nil, false, errors.New("packet: empty tag")
	}
	cur, err := c.Device(ctx, id)
	if err != nil {
		return nil, false, err
	}
	tags := edit(cur.Tags)
	if tags == nil {
		return cur, false, nil
	}
	out, err := one(ctx, c, func(a api) (*packngo.Device, *packngo.Response, error) {
		return a.devices.Update(id, &packngo.DeviceUpdateRequest{Tags: &tags})
	}, deviceFrom)
	if err != nil {
		return nil, false, fmt.Errorf("%w (tags were %q)", err, cur.Tags)
	}
	return out, true, nil
}
