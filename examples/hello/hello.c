#include <stdio.h>

int main(void) {
    puts("hello from a cached build");
    return 0;
}
