// SPDX-License-Identifier: GPL-2.0
/*
 * A driver whose init unwinds its allocations on error, except for one: when the third
 * allocation fails, the first one leaks (the classic error-path bug). Clean when nothing fails.
 */
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>

struct errpath_dev {
	char *name;
	void *rx_ring;
	void *tx_ring;
};

static struct errpath_dev *errpath_dev;

static noinline int errpath_setup(struct errpath_dev *dev)
{
	dev->name = kstrdup("errpath0", GFP_KERNEL);
	if (!dev->name)
		return -ENOMEM;
	dev->rx_ring = kzalloc(512, GFP_KERNEL);
	if (!dev->rx_ring)
		goto free_name;
	dev->tx_ring = kzalloc(512, GFP_KERNEL);
	if (!dev->tx_ring)
		return -ENOMEM;		/* bug: rx_ring and name leak */
	return 0;
free_name:
	kfree(dev->name);
	return -ENOMEM;
}

static int __init kmemgdb_errpath_init(void)
{
	int err;

	errpath_dev = kzalloc(sizeof(*errpath_dev), GFP_KERNEL);
	if (!errpath_dev)
		return -ENOMEM;
	err = errpath_setup(errpath_dev);
	if (err) {
		kfree(errpath_dev);
		errpath_dev = NULL;
	}
	return err;
}

static void __exit kmemgdb_errpath_exit(void)
{
	kfree(errpath_dev->tx_ring);
	kfree(errpath_dev->rx_ring);
	kfree(errpath_dev->name);
	kfree(errpath_dev);
}

module_init(kmemgdb_errpath_init);
module_exit(kmemgdb_errpath_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmemgdb error-path leak test module");
