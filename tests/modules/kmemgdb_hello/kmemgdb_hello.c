// SPDX-License-Identifier: GPL-2.0
/*
 * A small module for kmemgdb's integration tests: writing to
 * /sys/kernel/debug/kmemgdb_hello calls kmemgdb_hello_poke(), which reads and writes
 * kmemgdb_hello_counter, a variable in the module's own (vmalloc, 4 KiB-mapped) data.
 */
#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/slab.h>

static struct dentry *kmemgdb_hello_file, *kmemgdb_hello_bug_file;

/*
 * A cache of its own with a non-empty freelist (two objects freed, two kept), so tests can
 * corrupt a freelist that no other kernel code allocates from.
 */
static struct kmem_cache *kmemgdb_hello_cache;
static void *kmemgdb_hello_kept[2];

/* Only an interior pointer in the module's .bss keeps this object alive: not a leak. */
static char *kmemgdb_hello_bss_interior;
/* A whole page of its own, so hiding it hides nothing else (struct module sits in .data). */
unsigned long kmemgdb_hello_counter[PAGE_SIZE / sizeof(unsigned long)] __aligned(PAGE_SIZE) = { 1 };

noinline void kmemgdb_hello_poke(void)
{
	WRITE_ONCE(kmemgdb_hello_counter[0], READ_ONCE(kmemgdb_hello_counter[0]) + 1);
	pr_info("kmemgdb_hello: counter %lu\n", READ_ONCE(kmemgdb_hello_counter[0]));
}

static ssize_t kmemgdb_hello_write(struct file *file, const char __user *buf, size_t len,
				   loff_t *ppos)
{
	kmemgdb_hello_poke();
	return len;
}

static const struct file_operations kmemgdb_hello_fops = {
	.owner = THIS_MODULE,
	.write = kmemgdb_hello_write,
};

/* Writing to kmemgdb_hello_bug oopses the kernel: tests crash detection. */
static ssize_t kmemgdb_hello_bug_write(struct file *file, const char __user *buf, size_t len,
				       loff_t *ppos)
{
	BUG();
	return len;
}

static const struct file_operations kmemgdb_hello_bug_fops = {
	.owner = THIS_MODULE,
	.write = kmemgdb_hello_bug_write,
};

static int __init kmemgdb_hello_init(void)
{
	void *freed[2];

	kmemgdb_hello_cache = kmem_cache_create("kmemgdb_hello_cache", 96, 0, 0, NULL);
	if (!kmemgdb_hello_cache)
		return -ENOMEM;
	kmemgdb_hello_kept[0] = kmem_cache_alloc(kmemgdb_hello_cache, GFP_KERNEL);
	freed[0] = kmem_cache_alloc(kmemgdb_hello_cache, GFP_KERNEL);
	kmemgdb_hello_kept[1] = kmem_cache_alloc(kmemgdb_hello_cache, GFP_KERNEL);
	freed[1] = kmem_cache_alloc(kmemgdb_hello_cache, GFP_KERNEL);
	kmem_cache_free(kmemgdb_hello_cache, freed[0]);
	kmem_cache_free(kmemgdb_hello_cache, freed[1]);
	kmemgdb_hello_bss_interior = kmalloc(200, GFP_KERNEL);
	if (kmemgdb_hello_bss_interior)
		kmemgdb_hello_bss_interior += 40;
	pr_info("kmemgdb_hello: bss-held object at %px\n", kmemgdb_hello_bss_interior - 40);
	kmemgdb_hello_file = debugfs_create_file("kmemgdb_hello", 0200, NULL, NULL,
						 &kmemgdb_hello_fops);
	kmemgdb_hello_bug_file = debugfs_create_file("kmemgdb_hello_bug", 0200, NULL, NULL,
						     &kmemgdb_hello_bug_fops);
	pr_info("kmemgdb_hello: loaded, counter at %px\n", kmemgdb_hello_counter);
	return 0;
}

static void __exit kmemgdb_hello_exit(void)
{
	debugfs_remove(kmemgdb_hello_bug_file);
	debugfs_remove(kmemgdb_hello_file);
	kmem_cache_free(kmemgdb_hello_cache, kmemgdb_hello_kept[0]);
	kmem_cache_free(kmemgdb_hello_cache, kmemgdb_hello_kept[1]);
	kmem_cache_destroy(kmemgdb_hello_cache);
	kfree(kmemgdb_hello_bss_interior - 40);
}

module_init(kmemgdb_hello_init);
module_exit(kmemgdb_hello_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmemgdb integration test module");
